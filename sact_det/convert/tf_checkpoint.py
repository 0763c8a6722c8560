"""Reader of TensorFlow V2 checkpoints in pure Python + numpy (no TensorFlow, no protobuf).

A V2 checkpoint ``<prefix>`` is ``<prefix>.index`` plus ``<prefix>.data-NNNNN-of-MMMMM`` shards.
The index is a LevelDB-style sorted table (SSTable):

- data blocks: entries ``varint shared, varint non_shared, varint value_len, key[shared:], value``
  (keys prefix-compressed against the previous key, reset at the *restart points* listed at the
  block's end as fixed32 offsets followed by their fixed32 count);
- every block is followed by a 5-byte trailer: compression type (0 = none, 1 = snappy) and the
  masked crc32c of block + type byte;
- an index block (key = separator, value = BlockHandle ``varint offset, varint size`` of a data
  block), a metaindex block (unused), and a 48-byte footer: metaindex handle, index handle (zero
  padded to 40 bytes), magic 0xdb4775248b80fb57 (little endian).

The entry with key ``""`` is a ``BundleHeaderProto`` (num_shards, endianness, version); every other
key is a tensor name whose value is a ``BundleEntryProto`` (dtype, shape, shard_id, offset, size,
crc32c = masked crc32c of the tensor's bytes, slices). Both are decoded with a small protobuf
wire-format parser. TensorFlow writes these indices uncompressed; a snappy-compressed block is
reported as an error.

crc32c: numpy-vectorised (the data is cut into up to 16384 chunks processed in lock-step, then
combined with GF(2) shift matrices), about 50-150 MB/s on one core, so checking is on by default
(``check_crc=False`` skips it for the tensor data; index blocks are always checked).
"""
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["TFCheckpointError", "TFCheckpoint", "TensorEntry", "read_tf_checkpoint", "crc32c", "masked_crc32c",
           "parse_fields", "read_table"]

logger = logging.getLogger(__name__)

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto DataType -> numpy dtype (None: not readable as an array).
_DTYPES: Dict[int, Tuple[str, Optional[str]]] = {
    1: ("float32", "<f4"), 2: ("float64", "<f8"), 3: ("int32", "<i4"), 4: ("uint8", "|u1"), 5: ("int16", "<i2"),
    6: ("int8", "|i1"), 7: ("string", None), 8: ("complex64", "<c8"), 9: ("int64", "<i8"), 10: ("bool", "|b1"),
    11: ("qint8", "|i1"), 12: ("quint8", "|u1"), 13: ("qint32", "<i4"), 14: ("bfloat16", "<u2"), 15: ("qint16", "<i2"),
    16: ("quint16", "<u2"), 17: ("uint16", "<u2"), 18: ("complex128", "<c16"), 19: ("float16", "<f2"),
    20: ("resource", None), 21: ("variant", None), 22: ("uint32", "<u4"), 23: ("uint64", "<u8"),
}


class TFCheckpointError(ValueError):
    """A TensorFlow checkpoint cannot be found or read (the message names the file / variable)."""


# ---------------------------------------------------------------------------------------------
# crc32c (Castagnoli), numpy-vectorised
# ---------------------------------------------------------------------------------------------

def _make_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0x82F63B78), t >> 1).astype(np.uint32)
    return t


_TABLE = _make_table()
_TABLE_LIST = [int(x) for x in _TABLE]
_SHIFTS = np.arange(32, dtype=np.uint32)
_IDENTITY = (np.uint32(1) << _SHIFTS).astype(np.uint32)
_SMALL = 4096  # below this many bytes a plain Python loop is faster than the vectorised path


def _gf2_apply(mat: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """Apply a GF(2) 32x32 matrix (mat[i] = image of bit i, uint32[32]) to uint32 vectors (any shape).
    With ``vecs`` another matrix's 32 columns this is the product mat @ vecs."""
    bits = ((vecs[..., None] >> _SHIFTS) & np.uint32(1)).astype(bool)
    return np.bitwise_xor.reduce(np.where(bits, mat, np.uint32(0)), axis=-1).astype(np.uint32)


def _zero_byte_matrix() -> np.ndarray:
    """The crc register's map for one zero byte: r -> (r >> 8) ^ T[r & 0xff] (linear over GF(2))."""
    return ((_IDENTITY >> np.uint32(8)) ^ _TABLE[_IDENTITY & np.uint32(0xFF)]).astype(np.uint32)


_POWERS: List[np.ndarray] = [_zero_byte_matrix()]  # _POWERS[i] = shift by 2**i zero bytes


def _shift_matrix(nbytes: int) -> np.ndarray:
    """Matrix advancing the crc register over ``nbytes`` zero bytes."""
    result = _IDENTITY
    i = 0
    while nbytes:
        while len(_POWERS) <= i:
            _POWERS.append(_gf2_apply(_POWERS[-1], _POWERS[-1]))
        if nbytes & 1:
            result = _gf2_apply(_POWERS[i], result)
        nbytes >>= 1
        i += 1
    return result


def _raw_crc_python(reg: int, data: bytes) -> int:
    t = _TABLE_LIST
    for b in data:
        reg = (reg >> 8) ^ t[(reg ^ b) & 0xFF]
    return reg


def _raw_crc_zero_init(buf: np.ndarray) -> int:
    """crc register after ``buf`` (uint8, 1-D) starting from 0, without pre/post inversion.

    The register update is linear, so leading zero bytes leave it 0: the data is front-padded to
    k chunks of L bytes, the k registers advance in lock-step (one numpy step per byte column),
    then pairs are combined, reg(A+B) = shift_|B|(reg(A)) ^ reg(B), in log2(k) vectorised levels.
    """
    n = buf.size
    k = 1 << min(14, max(4, (n // 64).bit_length() - 1))
    length = -(-n // k)
    padded = np.zeros(k * length, dtype=np.uint8)
    padded[k * length - n:] = buf
    columns = np.ascontiguousarray(padded.reshape(k, length).T)  # (L, k): column j = byte j of every chunk
    reg = np.zeros(k, dtype=np.uint32)
    idx = np.empty(k, dtype=np.uint32)
    for col in columns:
        np.bitwise_xor(reg, col, out=idx)
        np.bitwise_and(idx, 0xFF, out=idx)
        reg >>= np.uint32(8)
        reg ^= _TABLE[idx]
    while reg.size > 1:
        shift = _shift_matrix(length)
        reg = _gf2_apply(shift, reg[0::2]) ^ reg[1::2]
        length *= 2
    return int(reg[0])


def crc32c(data: Union[bytes, bytearray, memoryview, np.ndarray]) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TensorFlow's crc32c::Value; e.g. b"123456789" -> 0xE3069283."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n = buf.size
    if n < _SMALL:
        return _raw_crc_python(0xFFFFFFFF, buf.tobytes()) ^ 0xFFFFFFFF
    # reg(init, data) = shift_n(init) ^ reg(0, data)
    init = int(_gf2_apply(_shift_matrix(n), np.array(0xFFFFFFFF, dtype=np.uint32)))
    return (init ^ _raw_crc_zero_init(buf)) ^ 0xFFFFFFFF


def masked_crc32c(data: Union[bytes, bytearray, memoryview, np.ndarray]) -> int:
    """TensorFlow / LevelDB masked crc: rotate right by 15 bits, add 0xa282ead8 (mod 2**32)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# protobuf wire format
# ---------------------------------------------------------------------------------------------

def _varint(buf: bytes, pos: int, what: str) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError(f"{what}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError(f"{what}: varint longer than 10 bytes")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_fields(buf: bytes, what: str) -> Dict[int, List[Union[int, bytes]]]:
    """Protobuf message -> {field number: [values]}: int for varint / fixed32 / fixed64, bytes for
    length-delimited fields (sub-messages, strings, packed arrays)."""
    fields: Dict[int, List[Union[int, bytes]]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, what)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise TFCheckpointError(f"{what}: invalid protobuf field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise TFCheckpointError(f"{what}: truncated fixed64 field {number}")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos, what)
            if pos + size > len(buf):
                raise TFCheckpointError(f"{what}: truncated length-delimited field {number}")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise TFCheckpointError(f"{what}: truncated fixed32 field {number}")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise TFCheckpointError(f"{what}: unsupported protobuf wire type {wire} (field {number})")
        fields.setdefault(number, []).append(value)
    return fields


def _last(fields: Dict[int, list], number: int, default):
    values = fields.get(number)
    return values[-1] if values else default  # proto3: the last occurrence of a scalar wins


def _packed_or_plain_varints(values: Sequence[Union[int, bytes]], what: str) -> List[int]:
    out: List[int] = []
    for v in values:
        if isinstance(v, bytes):
            pos = 0
            while pos < len(v):
                x, pos = _varint(v, pos, what)
                out.append(x)
        else:
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------
# sorted table (.index)
# ---------------------------------------------------------------------------------------------

def _block_handle(buf: bytes, pos: int, what: str) -> Tuple[int, int, int]:
    offset, pos = _varint(buf, pos, what)
    size, pos = _varint(buf, pos, what)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, what: str) -> bytes:
    """Block contents after checking bounds, compression type and the trailer's masked crc32c."""
    end = offset + size + BLOCK_TRAILER_SIZE
    if offset < 0 or end > len(data) - FOOTER_SIZE:
        raise TFCheckpointError(f"{what}: block [{offset}, {end}) lies beyond the end of the file "
                                f"({len(data)} bytes): the file is truncated or corrupt")
    contents = data[offset:offset + size]
    kind = data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:end], "little")
    if masked_crc32c(data[offset:offset + size + 1]) != stored:
        raise TFCheckpointError(f"{what}: block at offset {offset} fails its crc32c check (corrupt file)")
    if kind == 1:
        raise TFCheckpointError(f"{what}: block at offset {offset} is snappy-compressed; this reader handles only "
                                "uncompressed tables (TensorFlow writes checkpoint indices uncompressed)")
    if kind != 0:
        raise TFCheckpointError(f"{what}: block at offset {offset} has unknown compression type {kind}")
    return contents


def _block_entries(block: bytes, what: str) -> Iterator[Tuple[bytes, bytes]]:
    """(key, value) of every entry of a block, checking that each restart point starts an entry
    with an unshared key."""
    if len(block) < 4:
        raise TFCheckpointError(f"{what}: block of {len(block)} bytes is too short")
    num_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts < 1 or limit < 0:
        raise TFCheckpointError(f"{what}: bad restart count {num_restarts} in a block of {len(block)} bytes")
    restarts = [int.from_bytes(block[limit + 4 * i:limit + 4 * i + 4], "little") for i in range(num_restarts)]
    pending = set(restarts) if limit > 0 else set()
    pos, key = 0, b""
    while pos < limit:
        start = pos
        shared, pos = _varint(block, pos, what)
        non_shared, pos = _varint(block, pos, what)
        value_len, pos = _varint(block, pos, what)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise TFCheckpointError(f"{what}: corrupt entry at offset {start} of a block")
        if start in pending:
            if shared != 0:
                raise TFCheckpointError(f"{what}: restart point {start} has a prefix-compressed key")
            pending.discard(start)
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + value_len]
        pos += value_len
    if pending:
        raise TFCheckpointError(f"{what}: restart points {sorted(pending)} do not start entries")


def read_table(data: bytes, what: str = "table") -> List[Tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB-style table, in order (checks magic, crcs, key order)."""
    if len(data) < FOOTER_SIZE:
        raise TFCheckpointError(f"{what}: {len(data)} bytes is too short for a TensorFlow checkpoint index "
                                f"(footer alone is {FOOTER_SIZE}); the file is truncated")
    footer = data[-FOOTER_SIZE:]
    magic = int.from_bytes(footer[-8:], "little")
    if magic != TABLE_MAGIC:
        raise TFCheckpointError(f"{what}: bad magic number 0x{magic:016x} (expected 0x{TABLE_MAGIC:016x}); not a "
                                "TensorFlow V2 checkpoint index, or truncated")
    _, _, pos = _block_handle(footer, 0, what + " footer")  # metaindex (no meta blocks in checkpoints)
    index_offset, index_size, _ = _block_handle(footer, pos, what + " footer")
    index = _read_block(data, index_offset, index_size, what + " (index block)")
    entries: List[Tuple[bytes, bytes]] = []
    for i, (_, handle) in enumerate(_block_entries(index, what + " (index block)")):
        offset, size, _ = _block_handle(handle, 0, what)
        block = _read_block(data, offset, size, f"{what} (data block {i})")
        entries.extend(_block_entries(block, f"{what} (data block {i})"))
    for (a, _), (b, _) in zip(entries, entries[1:]):
        if not a < b:
            raise TFCheckpointError(f"{what}: keys out of order ({a!r} before {b!r})")
    return entries


# ---------------------------------------------------------------------------------------------
# bundle (checkpoint) entries
# ---------------------------------------------------------------------------------------------

@dataclass
class TensorEntry:
    """One BundleEntryProto: where a tensor's bytes are and what they are."""

    name: str
    dtype_enum: int
    shape: Tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: Optional[int] = None  # masked, as stored
    num_slices: int = 0

    @property
    def dtype_name(self) -> str:
        return _DTYPES.get(self.dtype_enum, (f"dtype#{self.dtype_enum}", None))[0]

    @property
    def has_array_form(self) -> bool:
        """False for string / resource / variant tensors (skipped by read_all)."""
        return _DTYPES.get(self.dtype_enum, ("", None))[1] is not None


def _parse_shape(buf: bytes, what: str) -> Tuple[int, ...]:
    f = parse_fields(buf, what)
    if _last(f, 3, 0):
        raise TFCheckpointError(f"{what}: tensor of unknown rank")
    dims = []
    for d in f.get(2, []):
        size = _signed64(_last(parse_fields(d, what), 1, 0))
        if size < 0:
            raise TFCheckpointError(f"{what}: unknown dimension ({size}) in a saved tensor")
        dims.append(size)
    return tuple(dims)


def parse_entry(name: str, value: bytes, what: str) -> TensorEntry:
    """BundleEntryProto bytes -> TensorEntry."""
    what = f"{what}: entry {name!r}"
    f = parse_fields(value, what)
    shape_msgs = f.get(2, [])
    return TensorEntry(name=name, dtype_enum=_last(f, 1, 0), shape=_parse_shape(shape_msgs[-1], what) if shape_msgs
                       else (), shard_id=_last(f, 3, 0), offset=_signed64(_last(f, 4, 0)),
                       size=_signed64(_last(f, 5, 0)), crc32c=_last(f, 6, None), num_slices=len(f.get(7, [])))


def parse_header(value: bytes, what: str) -> Dict[str, int]:
    """BundleHeaderProto bytes -> {"num_shards", "endianness" (0 little, 1 big), "producer", "min_consumer"}."""
    f = parse_fields(value, what + ": header")
    version = parse_fields(_last(f, 3, b""), what + ": header version")
    bad = _packed_or_plain_varints(version.get(3, []), what)
    return {"num_shards": _last(f, 1, 0), "endianness": _last(f, 2, 0), "producer": _last(version, 1, 0),
            "min_consumer": _last(version, 2, 0), "bad_consumers": bad}


# ---------------------------------------------------------------------------------------------
# locating the files
# ---------------------------------------------------------------------------------------------

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_PATH = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', re.M)


def shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def _state_file_prefix(text: str) -> Optional[str]:
    """The newest checkpoint named by a ``checkpoint`` state file (text CheckpointState proto)."""
    m = _STATE_PATH.search(text)
    return m.group(1).encode().decode("unicode_escape") if m else None


def _prefix_in_folder(folder: str) -> str:
    """The checkpoint prefix inside a directory: the one ``checkpoint`` names, or the only ``*.index``."""
    indices = sorted(f[:-len(".index")] for f in os.listdir(folder) if f.endswith(".index"))
    state = os.path.join(folder, "checkpoint")
    if os.path.isfile(state):
        with open(state, encoding="utf-8", errors="replace") as f:
            named = _state_file_prefix(f.read())
        if named:
            # the state file may hold an absolute path from the training machine: fall back to its basename
            for cand in ([named] if os.path.isabs(named) else []) + [os.path.join(folder, named),
                                                                     os.path.join(folder, os.path.basename(named))]:
                if os.path.isfile(cand + ".index"):
                    return cand
            raise TFCheckpointError(f"{state} names checkpoint {named!r}, but {os.path.basename(named)}.index is "
                                    f"not in {folder} (found: {indices or 'no .index files'})")
    if len(indices) == 1:
        return os.path.join(folder, indices[0])
    if not indices:
        raise TFCheckpointError(f"{folder} holds no TensorFlow V2 checkpoint (no *.index file)")
    raise TFCheckpointError(f"{folder} holds {len(indices)} checkpoints ({', '.join(indices)}) and no 'checkpoint' "
                            "state file naming one; pass the prefix of the one you want (e.g. "
                            f"{os.path.join(folder, indices[-1])})")


def _tar_prefix(members: Dict[str, tarfile.TarInfo], archive: str, read: Callable[[str], bytes]) -> str:
    indices = sorted(n[:-len(".index")] for n in members if n.endswith(".index"))
    states = sorted(n for n in members if os.path.basename(n) == "checkpoint")
    for state in states:
        named = _state_file_prefix(read(state).decode("utf-8", errors="replace"))
        if named:
            cand = os.path.join(os.path.dirname(state), os.path.basename(named))
            if cand in indices:
                return cand
    if len(indices) == 1:
        return indices[0]
    if not indices:
        raise TFCheckpointError(f"{archive} holds no TensorFlow V2 checkpoint (no *.index member; members: "
                                f"{sorted(members)[:10]})")
    raise TFCheckpointError(f"{archive} holds {len(indices)} checkpoints ({', '.join(indices)}) and no 'checkpoint' "
                            "state file naming one of them; extract it and pass the prefix you want")


# ---------------------------------------------------------------------------------------------
# the checkpoint
# ---------------------------------------------------------------------------------------------

ShardLoader = Callable[[int], Union[bytes, np.ndarray]]


class TFCheckpoint:
    """A TensorFlow V2 checkpoint opened for reading.

    ``path``: a prefix (``.../model.ckpt``), its ``.index`` or ``.data-*`` file, a directory with one
    checkpoint (or a ``checkpoint`` state file naming one), or a ``.tar`` / ``.tar.gz`` holding one
    (members read in memory). ``entries``: name -> TensorEntry in sorted order.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._tar: Optional[tarfile.TarFile] = None
        self._shards: Dict[int, Union[bytes, np.ndarray]] = {}
        self.skipped: List[str] = []
        try:
            self._open(os.fspath(path))
        except BaseException:
            self.close()
            raise

    def _open(self, path: str) -> None:
        index, self.prefix, self._shard_source = self._locate(path)
        self.source = f"{path}" if self.prefix == path else f"{path} (checkpoint {self.prefix})"
        table = read_table(index, f"{self.prefix}.index")
        if not table or table[0][0] != b"":
            raise TFCheckpointError(f"{self.prefix}.index has no bundle header entry: not a TensorFlow V2 checkpoint")
        self.header = parse_header(table[0][1], f"{self.prefix}.index")
        if self.header["min_consumer"] > 1:
            raise TFCheckpointError(f"{self.prefix}.index needs checkpoint format version >= "
                                    f"{self.header['min_consumer']} (this reader knows version 1)")
        if self.header["num_shards"] < 1 and len(table) > 1:
            raise TFCheckpointError(f"{self.prefix}.index: header says {self.header['num_shards']} data shards")
        self.entries: Dict[str, TensorEntry] = {}
        for key, value in table[1:]:
            name = key.decode("utf-8", errors="replace")
            self.entries[name] = parse_entry(name, value, f"{self.prefix}.index")

    # -- locating ----------------------------------------------------------------------------
    def _locate(self, path: str) -> Tuple[bytes, str, Callable[[int], Union[bytes, np.ndarray]]]:
        if os.path.isdir(path):
            prefix = _prefix_in_folder(path)
        elif os.path.isfile(path) and path.endswith(".index"):
            prefix = path[:-len(".index")]
        elif os.path.isfile(path) and _DATA_SUFFIX.search(path):
            prefix = _DATA_SUFFIX.sub("", path)
        elif os.path.isfile(path) and tarfile.is_tarfile(path):
            return self._locate_tar(path)
        elif os.path.isfile(path + ".index"):
            prefix = path
        elif os.path.isfile(path):
            raise TFCheckpointError(f"{path} is neither a TensorFlow V2 checkpoint (.index / .data-*) nor a tar "
                                    "archive; V1 checkpoints (a single file) are not supported")
        else:
            hint = ""
            folder = os.path.dirname(path) or "."
            if os.path.isdir(folder):
                near = sorted(f for f in os.listdir(folder) if f.endswith(".index"))[:5]
                hint = f" (checkpoints in {folder}: {near})" if near else f" ({folder} holds no *.index file)"
            raise TFCheckpointError(f"no TensorFlow checkpoint at {path}: neither {path}.index nor a directory or "
                                    f"archive of that name exists{hint}")
        if not os.path.isfile(prefix + ".index"):
            raise TFCheckpointError(f"{prefix}.index is missing")
        with open(prefix + ".index", "rb") as f:
            index = f.read()

        def load(shard: int) -> np.ndarray:
            name = shard_name(prefix, shard, self.header["num_shards"])
            if not os.path.isfile(name):
                raise TFCheckpointError(f"data shard {name} of checkpoint {prefix} is missing (the index lists "
                                        f"{self.header['num_shards']} shard(s))")
            if os.path.getsize(name) == 0:
                return np.zeros(0, dtype=np.uint8)
            return np.memmap(name, dtype=np.uint8, mode="r")

        return index, prefix, load

    def _locate_tar(self, path: str) -> Tuple[bytes, str, Callable[[int], Union[bytes, np.ndarray]]]:
        try:
            self._tar = tarfile.open(path, "r:*")
            members = {m.name[2:] if m.name.startswith("./") else m.name: m for m in self._tar.getmembers()
                       if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise TFCheckpointError(f"cannot read archive {path}: {type(e).__name__}: {e} (truncated download?)") from e

        def read(name: str) -> bytes:
            try:
                f = self._tar.extractfile(members[name])
                return f.read()
            except (tarfile.TarError, OSError, EOFError) as e:
                raise TFCheckpointError(f"cannot read {name} from archive {path}: {type(e).__name__}: {e} "
                                        "(truncated download?)") from e

        prefix = _tar_prefix(members, path, read)
        index = read(prefix + ".index")

        def load(shard: int) -> bytes:
            name = shard_name(prefix, shard, self.header["num_shards"])
            if name not in members:
                raise TFCheckpointError(f"archive {path} lacks data shard {name} of checkpoint {prefix} (the index "
                                        f"lists {self.header['num_shards']} shard(s))")
            return read(name)

        return index, f"{path}:{prefix}", load

    # -- reading -----------------------------------------------------------------------------
    def _shard(self, shard: int) -> Union[bytes, np.ndarray]:
        if shard not in self._shards:
            if not 0 <= shard < self.header["num_shards"]:
                raise TFCheckpointError(f"{self.prefix}.index refers to data shard {shard}, but the header lists "
                                        f"{self.header['num_shards']} shard(s)")
            self._shards[shard] = self._shard_source(shard)
        return self._shards[shard]

    def variables(self) -> Dict[str, Tuple[Tuple[int, ...], str]]:
        """name -> (shape, dtype name) of every entry, without reading the data."""
        return {n: (e.shape, e.dtype_name) for n, e in self.entries.items()}

    def read(self, name: str, check_crc: bool = True) -> np.ndarray:
        """The tensor ``name`` as a writable, native-endian numpy array of its shape.

        bfloat16 is widened to float32 (exactly); string / resource / variant tensors and partitioned
        (sliced) variables raise TFCheckpointError."""
        e = self.entries.get(name)
        if e is None:
            raise TFCheckpointError(f"{self.source} has no variable {name!r}")
        what = f"{self.source}: variable {name!r}"
        if e.num_slices:
            raise TFCheckpointError(f"{what} is a partitioned variable saved in {e.num_slices} slices; not supported")
        np_dtype = _DTYPES.get(e.dtype_enum, ("", None))[1]
        if np_dtype is None:
            raise TFCheckpointError(f"{what} has dtype {e.dtype_name}, which has no numpy array form")
        dtype = np.dtype(np_dtype)
        if self.header["endianness"] == 1:
            dtype = dtype.newbyteorder(">")
        count = int(np.prod(e.shape, dtype=np.int64))
        if e.size != count * dtype.itemsize:
            raise TFCheckpointError(f"{what}: {e.size} bytes stored for shape {list(e.shape)} of {e.dtype_name} "
                                    f"({count * dtype.itemsize} expected)")
        shard = self._shard(e.shard_id)
        if e.offset < 0 or e.offset + e.size > len(shard):
            raise TFCheckpointError(
                f"{shard_name(self.prefix, e.shard_id, self.header['num_shards'])} is truncated: {len(shard)} bytes, "
                f"variable {name!r} needs bytes [{e.offset}, {e.offset + e.size})")
        raw = shard[e.offset:e.offset + e.size]
        if check_crc and e.crc32c is not None and masked_crc32c(raw) != e.crc32c:
            raise TFCheckpointError(f"{what}: data fails its crc32c check (corrupt data file)")
        arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(e.shape)
        if e.dtype_name == "bfloat16":
            return (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return arr.astype(dtype.newbyteorder("="), copy=True)

    def read_all(self, check_crc: bool = True, skip_unreadable: bool = True,
                 progress: Optional[Callable[[int, int, str], None]] = None) -> Dict[str, np.ndarray]:
        """Every tensor, in name order. Entries without an array form (string / resource / variant
        tensors) are skipped with a warning (``skip_unreadable``) or raise; partitioned variables
        raise. ``progress(i, n, name)`` is called before each tensor."""
        out: Dict[str, np.ndarray] = {}
        self.skipped = []
        n = len(self.entries)
        for i, (name, e) in enumerate(self.entries.items()):
            if progress is not None:
                progress(i, n, name)
            if not e.has_array_form and skip_unreadable:
                self.skipped.append(name)
                continue
            out[name] = self.read(name, check_crc=check_crc)
        if self.skipped:
            logger.warning("%s: skipped %d entries without a numeric array form: %s", self.source, len(self.skipped),
                           ", ".join(f"{s} ({self.entries[s].dtype_name})" for s in self.skipped))
        return out

    def close(self) -> None:
        self._shards.clear()
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "TFCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_tf_checkpoint(path: str, check_crc: bool = True) -> Dict[str, np.ndarray]:
    """All variables of a TensorFlow V2 checkpoint: {name: np.ndarray} (TF layouts, e.g. conv HWIO).

    ``path``: prefix (``.../model.ckpt``), ``.index`` file, directory with one checkpoint (or a
    ``checkpoint`` state file naming one), or a released ``.tar.gz``. ``check_crc`` verifies every
    tensor's masked crc32c (vectorised numpy, a few seconds for ResNet-101). String tensors are skipped
    with a warning."""
    with TFCheckpoint(path) as ckpt:
        return ckpt.read_all(check_crc=check_crc)
