"""The pure-Python TensorFlow V2 checkpoint reader (sact_det.convert.tf_checkpoint).

Independent expectations: the checkpoints the original TF code wrote (../shared/oracle: names,
shapes, dtypes from variables.txt, crc32c values computed by TensorFlow, initial values and the
halting settings stated in its README), published CRC-32C test vectors (RFC 3720), and small
checkpoints written here by a minimal test-only writer (multi-block indices, restart points,
every dtype, big-endian, snappy flag, slices).
"""
import shutil
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

from sact_det.convert.tf_checkpoint import TFCheckpoint, TFCheckpointError, crc32c, masked_crc32c, read_tf_checkpoint

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"
MODELS = ["cifar_resnet32_sact", "cifar_resnet32_act", "imagenet_small_sact", "imagenet_small_act",
          "imagenet_small_dense"]
needs_oracle = pytest.mark.skipif(not ORACLE.is_dir(), reason=f"oracle data {ORACLE} not present (outside this repo)")

# ../shared/oracle/README.md section 5: halting bias per block, global / local weight scale of `varied`
VARIED = {"cifar_resnet32_sact": ([0.55, 0, 0], 0.1, 3.0), "cifar_resnet32_act": ([-1, -1, -1], 1.0, None),
          "imagenet_small_sact": ([1.8, 2.2, 0.8, 3], 0.1, 4.0), "imagenet_small_act": ([0.5, 6, -0.5, 5], 1.0, None)}


def _variables_txt(model: str) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    out = {}
    for line in (ORACLE / model / "variables.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape, dtype = line.split()
        dims = shape.strip("[]")
        out[name] = (tuple(int(d) for d in dims.split(",")) if dims else (), dtype)
    return out


# ------------------------------------------------------------------------------------------
# test-only writer of V2 checkpoints (LevelDB table + BundleEntryProto), for formats the
# oracle files do not exercise
# ------------------------------------------------------------------------------------------

def _vint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _fv(num: int, v: int) -> bytes:
    return _vint(num << 3) + _vint(v)


def _fb(num: int, b: bytes) -> bytes:
    return _vint(num << 3 | 2) + _vint(len(b)) + b


DT = {"float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6, "string": 7, "complex64": 8,
      "int64": 9, "bool": 10, "bfloat16": 14, "float16": 19}


def _entry(dtype: str, shape, offset: int, size: int, crc: Optional[int], slices: int = 0) -> bytes:
    shape_msg = b"".join(_fb(2, _fv(1, d)) for d in shape)
    out = _fv(1, DT[dtype]) + _fb(2, shape_msg) + _fv(4, offset) + _fv(5, size)
    if crc is not None:
        out += _vint(6 << 3 | 5) + crc.to_bytes(4, "little")
    for _ in range(slices):
        out += _fb(7, b"")
    return out


def _block(items: List[Tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, prev = bytearray(), [], b""
    for i, (k, v) in enumerate(items):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                shared += 1
        out += _vint(shared) + _vint(len(k) - shared) + _vint(len(v)) + k[shared:] + v
        prev = k
    for r in restarts or [0]:
        out += r.to_bytes(4, "little")
    return bytes(out + len(restarts or [0]).to_bytes(4, "little"))


def _write_table(items: List[Tuple[bytes, bytes]], block_size: int, restart_interval: int, kind: int = 0) -> bytes:
    data = bytearray()

    def emit(contents: bytes) -> bytes:
        handle = _vint(len(data)) + _vint(len(contents))
        data.extend(contents + bytes([kind]) + masked_crc32c(contents + bytes([kind])).to_bytes(4, "little"))
        return handle

    index, current = [], []
    for k, v in items:
        current.append((k, v))
        if sum(len(a) + len(b) + 3 for a, b in current) >= block_size:
            index.append((k, emit(_block(current, restart_interval))))
            current = []
    if current:
        index.append((current[-1][0], emit(_block(current, restart_interval))))
    meta = emit(_block([], 1))
    idx = emit(_block(index, 1))
    footer = (meta + idx).ljust(40, b"\0") + (0xDB4775248B80FB57).to_bytes(8, "little")
    return bytes(data + footer)


def write_checkpoint(prefix: str, tensors: Dict[str, np.ndarray], block_size: int = 4096, restart_interval: int = 16,
                     big_endian: bool = False, kind: int = 0, sliced: Tuple[str, ...] = ()) -> None:
    data, items = bytearray(), []
    for name in sorted(tensors):
        a = tensors[name]
        if a.dtype.kind in "SUO":
            items.append((name.encode(), _entry("string", a.shape, len(data), 0, None)))
            continue
        dtype = "bfloat16" if a.dtype == np.dtype("V2") else a.dtype.name
        order = ">" if big_endian else "<"
        raw = a.tobytes() if a.dtype.kind == "V" else a.astype(a.dtype.newbyteorder(order)).tobytes()
        items.append((name.encode(), _entry(dtype, a.shape, len(data), len(raw), masked_crc32c(raw),
                                            slices=2 if name in sliced else 0)))
        data += raw
    header = _fv(1, 1) + _fv(2, 1 if big_endian else 0) + _fb(3, _fv(1, 1))
    with open(prefix + ".index", "wb") as f:
        f.write(_write_table([(b"", header)] + items, block_size, restart_interval, kind))
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(bytes(data))


# ------------------------------------------------------------------------------------------
# crc32c
# ------------------------------------------------------------------------------------------

def test_crc32c_published_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert masked_crc32c(b"") == 0xA282EAD8  # mask(0) = the delta


@pytest.mark.parametrize("n", [4095, 4096, 5001, 70001, 1 << 20])
def test_crc32c_vectorised_matches_bytewise(n):
    """The chunked numpy path equals a plain bitwise CRC-32C (reflected poly 0x82F63B78) on the same bytes."""
    data = np.random.RandomState(n).randint(0, 256, n).astype(np.uint8)
    if n <= 70001:  # bit-by-bit reference (no table)
        reg = 0xFFFFFFFF
        for b in data.tobytes():
            reg ^= b
            for _ in range(8):
                reg = (reg >> 1) ^ (0x82F63B78 if reg & 1 else 0)
        assert crc32c(data.tobytes()) == reg ^ 0xFFFFFFFF
    assert crc32c(data) == crc32c(data.tobytes())  # arrays and bytes alike (1 MiB: checked via the oracle crcs)


# ------------------------------------------------------------------------------------------
# the oracle checkpoints (written by TensorFlow)
# ------------------------------------------------------------------------------------------

@needs_oracle
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", ["init", "varied"])
def test_oracle_names_shapes_dtypes(model, variant):
    tensors = read_tf_checkpoint(str(ORACLE / model / variant / "model.ckpt"))  # checks TF's crc32c of every tensor
    expected = _variables_txt(model)
    assert sorted(tensors) == sorted(expected)
    for name, (shape, dtype) in expected.items():
        assert tensors[name].shape == shape, name
        assert tensors[name].dtype == np.dtype(dtype), name
        assert tensors[name].flags.writeable


def _uvarint(buf: bytes, pos: int) -> Tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def _data_block_restarts(index_file: bytes) -> List[int]:
    """Restart counts of the data blocks (footer -> index block -> handles), parsed here independently."""
    footer = index_file[-48:]
    pos = 0
    for _ in range(2):  # skip the metaindex handle
        _, pos = _uvarint(footer, pos)
    off, pos = _uvarint(footer, pos)
    size, _ = _uvarint(footer, pos)
    index_block = index_file[off:off + size]
    n = int.from_bytes(index_block[-4:], "little")  # index blocks restart at every entry
    counts, pos = [], 0
    for _ in range(n):
        shared, pos = _uvarint(index_block, pos)
        non_shared, pos = _uvarint(index_block, pos)
        vlen, pos = _uvarint(index_block, pos)
        pos += non_shared
        b_off, q = _uvarint(index_block, pos)
        b_size, _ = _uvarint(index_block, q)
        pos += vlen
        counts.append(int.from_bytes(index_file[b_off + b_size - 4:b_off + b_size], "little"))
    return counts


@needs_oracle
@pytest.mark.parametrize("model", MODELS)
def test_oracle_index_uses_restart_points(model):
    """The TF-written indices are one data block whose prefix compression restarts every 16 keys, so the
    reader's restart handling is exercised: ceil((variables + header) / 16) restart points."""
    index = (ORACLE / model / "init" / "model.ckpt.index").read_bytes()
    n = len(_variables_txt(model))
    assert _data_block_restarts(index) == [-(-(n + 1) // 16)]
    assert len(TFCheckpoint(str(ORACLE / model / "init" / "model.ckpt")).entries) == n


@needs_oracle
@pytest.mark.parametrize("model", MODELS)
def test_oracle_init_values(model):
    """init: BN gamma 1, beta 0, moving mean 0, var 1; conv biases 0, halting biases -3 (README section 5)."""
    t = read_tf_checkpoint(str(ORACLE / model / "init" / "model.ckpt"))
    halting_bias = "local_conv/biases" if model.endswith("sact") else "global_conv/biases"
    n_halt = 0
    for name, v in t.items():
        last = name.rsplit("/", 1)[1]
        expect = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}.get(last)
        if last == "biases":
            expect = -3.0 if name.endswith("halting_proba/" + halting_bias) else 0.0
            n_halt += name.endswith(halting_bias)
        if expect is not None:
            np.testing.assert_array_equal(v, np.full_like(v, expect), err_msg=name)
        if last == "weights":
            fan_in = int(np.prod(v.shape[:3]))
            assert 0.3 < v.std() * np.sqrt(fan_in / 2.0) < 1.5, name  # He-initialised, not zeros / garbage
    units = {"cifar": 3 * 4, "imagenet": 2 + 2 + 3 + 1}[model.split("_")[0]]
    assert n_halt == (0 if model.endswith("dense") else units)


@needs_oracle
@pytest.mark.parametrize("model", sorted(VARIED))
def test_oracle_varied_halting_settings(model):
    """varied: halting biases per block from the README table, halting weights = init weights x scale."""
    init = read_tf_checkpoint(str(ORACLE / model / "init" / "model.ckpt"))
    var = read_tf_checkpoint(str(ORACLE / model / "varied" / "model.ckpt"))
    biases, global_scale, local_scale = VARIED[model]
    bias_var = "local_conv/biases" if local_scale else "global_conv/biases"
    sep = "block_" if model.startswith("cifar") else "block"
    seen = 0
    for name, v in var.items():
        if "/halting_proba/" in name:
            block = int(name.split("/")[1][len(sep):])
            if name.endswith(bias_var):
                np.testing.assert_allclose(v, biases[block - 1], rtol=0, atol=1e-6, err_msg=name)
                seen += 1
            elif name.endswith("global_conv/weights"):
                np.testing.assert_allclose(v, init[name] * global_scale, rtol=1e-6, err_msg=name)
            elif name.endswith("local_conv/weights"):
                np.testing.assert_allclose(v, init[name] * local_scale, rtol=1e-6, err_msg=name)
        elif name.endswith("/weights") or name.endswith("/biases"):
            np.testing.assert_array_equal(v, init[name], err_msg=name)  # shared conv weights
        elif name.endswith("/gamma"):
            assert 0.75 <= v.min() and v.max() <= 1.25, name
        elif name.endswith("/moving_variance"):
            assert v.min() > 0, name
    assert seen == len([n for n in var if n.endswith(bias_var)]) > 0


# ------------------------------------------------------------------------------------------
# path forms: prefix, .index, .data, directory, state file, tar.gz
# ------------------------------------------------------------------------------------------

def _copy_ckpt(src_prefix: Path, dst_prefix: Path) -> None:
    dst_prefix.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(str(src_prefix) + suffix, str(dst_prefix) + suffix)


@needs_oracle
def test_path_forms_and_tarball(tmp_path):
    src = ORACLE / "imagenet_small_act" / "varied" / "model.ckpt"
    ref = read_tf_checkpoint(str(src))
    forms = [str(src) + ".index", str(src) + ".data-00000-of-00001", str(src.parent)]
    # a released-style tarball: folder/{checkpoint (absolute path of the training machine), model.ckpt-N.*}
    folder = tmp_path / "pack" / "imagenet_101_sact_5e-3"
    _copy_ckpt(src, folder / "model.ckpt-1234")
    _copy_ckpt(ORACLE / "imagenet_small_act" / "init" / "model.ckpt", folder / "model.ckpt-1000")
    (folder / "model.ckpt-1234.meta").write_bytes(b"graph")
    (folder / "checkpoint").write_text('model_checkpoint_path: "/cns/train/model.ckpt-1234"\n'
                                       'all_model_checkpoint_paths: "/cns/train/model.ckpt-1000"\n'
                                       'all_model_checkpoint_paths: "/cns/train/model.ckpt-1234"\n')
    tgz = tmp_path / "imagenet_101_sact_5e-3.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="imagenet_101_sact_5e-3")
    forms += [str(folder), str(tgz)]
    for form in forms:
        got = read_tf_checkpoint(form)
        assert sorted(got) == sorted(ref), form
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{form}: {k}")

    # two checkpoints, no state file: an error listing both (folder and tarball)
    (folder / "checkpoint").unlink()
    with pytest.raises(TFCheckpointError, match="model.ckpt-1000.*model.ckpt-1234"):
        TFCheckpoint(str(folder))
    tar2 = tmp_path / "two.tar"
    with tarfile.open(tar2, "w") as tar:
        tar.add(folder, arcname="x")
    with pytest.raises(TFCheckpointError, match="2 checkpoints"):
        TFCheckpoint(str(tar2))
    # tarball without the data shard
    tar3 = tmp_path / "nodata.tar.gz"
    with tarfile.open(tar3, "w:gz") as tar:
        tar.add(str(folder / "model.ckpt-1234.index"), arcname="m/model.ckpt-1234.index")
    with pytest.raises(TFCheckpointError, match=r"lacks data shard .*model.ckpt-1234.data-00000-of-00001"):
        read_tf_checkpoint(str(tar3))
    # truncated download
    tar4 = tmp_path / "cut.tar.gz"
    tar4.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    with pytest.raises(TFCheckpointError):
        read_tf_checkpoint(str(tar4))


# ------------------------------------------------------------------------------------------
# damaged files
# ------------------------------------------------------------------------------------------

@needs_oracle
def test_damaged_files(tmp_path):
    src = ORACLE / "cifar_resnet32_act" / "init" / "model.ckpt"
    p = tmp_path / "model.ckpt"
    index = Path(str(src) + ".index").read_bytes()
    data = Path(str(src) + ".data-00000-of-00001").read_bytes()

    def put(idx: bytes, dat: Optional[bytes]) -> None:
        Path(str(p) + ".index").write_bytes(idx)
        d = Path(str(p) + ".data-00000-of-00001")
        if dat is None:
            d.unlink(missing_ok=True)
        else:
            d.write_bytes(dat)

    with pytest.raises(TFCheckpointError, match="no TensorFlow checkpoint at"):
        read_tf_checkpoint(str(tmp_path / "nothing"))
    put(index, None)
    with pytest.raises(TFCheckpointError, match=r"data shard .*model.ckpt.data-00000-of-00001 .*missing"):
        read_tf_checkpoint(str(p))
    put(index, data[:-100])
    with pytest.raises(TFCheckpointError, match="truncated"):
        read_tf_checkpoint(str(p))
    put(index[:-10], data)
    with pytest.raises(TFCheckpointError, match="bad magic"):
        read_tf_checkpoint(str(p))
    put(index[:20], data)
    with pytest.raises(TFCheckpointError, match="too short"):
        read_tf_checkpoint(str(p))
    bad = bytearray(index)
    bad[-1] ^= 0xFF
    put(bytes(bad), data)
    with pytest.raises(TFCheckpointError, match="bad magic"):
        read_tf_checkpoint(str(p))
    bad = bytearray(index)
    bad[100] ^= 0x01  # inside the data block of the index
    put(bytes(bad), data)
    with pytest.raises(TFCheckpointError, match="crc32c"):
        read_tf_checkpoint(str(p))
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x10
    put(index, bytes(bad))
    with pytest.raises(TFCheckpointError, match="variable .* crc32c"):
        read_tf_checkpoint(str(p))
    assert len(read_tf_checkpoint(str(p), check_crc=False)) == 245  # the check can be skipped
    Path(str(p) + ".index").unlink()
    Path(str(tmp_path / "v1.ckpt")).write_bytes(b"not a checkpoint")
    with pytest.raises(TFCheckpointError, match="V1"):
        read_tf_checkpoint(str(tmp_path / "v1.ckpt"))


# ------------------------------------------------------------------------------------------
# formats the oracle does not exercise (test-only writer)
# ------------------------------------------------------------------------------------------

def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view("V2")


def _tensors() -> Dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    t = {f"net/block{b}/unit_{u}/bottleneck_v2/conv{c}/weights": rng.randn(1, 3, 2, 2).astype(np.float32)
         for b in range(1, 5) for u in range(1, 12) for c in range(1, 4)}
    t.update({"a/f16": rng.randn(3, 5).astype(np.float16), "a/f64": rng.randn(7).astype(np.float64),
              "a/i32": rng.randint(-9, 9, (2, 3)).astype(np.int32), "a/i64": np.array([2 ** 40, -5], np.int64),
              "a/u8": np.arange(10, dtype=np.uint8), "a/bool": np.array([True, False, True]),
              "a/i8": np.array([-128, 127], np.int8), "a/i16": np.array([-3, 300], np.int16),
              "a/c64": np.array([1 + 2j], np.complex64), "a/scalar": np.array(3.5, np.float32),
              "a/empty": np.zeros((0, 3), np.float32), "a/big": rng.randn(40, 300).astype(np.float32),
              "global_step": np.array(1234, np.int64)})
    return t


@pytest.mark.parametrize("block_size,restart", [(256, 3), (64, 1), (1 << 18, 16)])
def test_written_multiblock_all_dtypes(tmp_path, block_size, restart):
    t = _tensors()
    t_bf = {**t, "a/bf16": _bf16(np.array([1.5, -2.25, 3.0], np.float32)), "a/str": np.array([b"x"], dtype=object)}
    prefix = str(tmp_path / "m.ckpt")
    write_checkpoint(prefix, t_bf, block_size=block_size, restart_interval=restart)
    restarts = _data_block_restarts(Path(prefix + ".index").read_bytes())
    if block_size == 64:
        assert len(restarts) > len(t_bf) // 2  # one or two entries per block
    elif block_size == 256:
        assert len(restarts) > 10 and max(restarts) > 1  # many blocks, several restarts each
    else:
        assert restarts == [-(-(len(t_bf) + 1) // restart)]
    ckpt = TFCheckpoint(prefix)
    got = ckpt.read_all()
    assert ckpt.skipped == ["a/str"]
    assert sorted(got) == sorted(set(t_bf) - {"a/str"})
    for k, v in t.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    np.testing.assert_array_equal(got["a/bf16"], np.array([1.5, -2.25, 3.0], np.float32))
    assert ckpt.variables()["a/str"] == ((1,), "string")
    with pytest.raises(TFCheckpointError, match="a/str.*string"):
        ckpt.read("a/str")


def test_written_big_endian(tmp_path):
    t = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([1, -2], np.int64)}
    write_checkpoint(str(tmp_path / "be"), t, big_endian=True)
    got = read_tf_checkpoint(str(tmp_path / "be"))
    for k in t:
        np.testing.assert_array_equal(got[k], t[k])
        assert got[k].dtype.isnative


def test_snappy_and_slices_are_named(tmp_path):
    write_checkpoint(str(tmp_path / "s"), {"x": np.ones(2, np.float32)}, kind=1)
    with pytest.raises(TFCheckpointError, match="snappy"):
        TFCheckpoint(str(tmp_path / "s"))
    write_checkpoint(str(tmp_path / "p"), {"part/w": np.ones(2, np.float32), "x": np.ones(1, np.float32)},
                     sliced=("part/w",))
    with pytest.raises(TFCheckpointError, match="part/w.*partitioned"):
        read_tf_checkpoint(str(tmp_path / "p"))


def test_corrupt_restart_point(tmp_path):
    """A restart offset that does not start an unshared key is reported."""
    items = [(b"", _fv(1, 1)), (b"abc", b"v"), (b"abd", b"w")]
    block = bytearray(_block(items, restart_interval=16))
    # point the single restart at the 2nd entry (which shares 'ab' with the first): claim 2 restarts
    second = len(_vint(0) + _vint(0) + _vint(2) + _fv(1, 1)) + len(_vint(0) + _vint(3) + _vint(1) + b"abcv")
    body = bytes(block[:-8])
    bad = body + (0).to_bytes(4, "little") + second.to_bytes(4, "little") + (2).to_bytes(4, "little")
    from sact_det.convert.tf_checkpoint import _block_entries

    with pytest.raises(TFCheckpointError, match="restart point"):
        list(_block_entries(bad, "t"))
    assert [k for k, _ in _block_entries(bytes(block), "t")] == [b"", b"abc", b"abd"]
