"""The one atomic-write helper (sact_det.utils.atomic) and every writer built on it."""
import os
import pickle
import stat

import pytest
import torch

from sact_det.classification.checkpoint import ClassifierCheckpointer, last_checkpoint
from sact_det.classification.export import write_d2_pkl
from sact_det.engine.checkpoint import AtomicDetectionCheckpointer
from sact_det.utils.atomic import TMP_PREFIX, atomic_torch_save, atomic_write, remove_stale_temporaries


class Crash(RuntimeError):
    pass


def _half_then_crash(f) -> None:
    f.write(b"half of the new")
    raise Crash("killed mid-write")


def test_crash_mid_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write(str(path), lambda f: f.write(b"old content"))
    with pytest.raises(Crash):
        atomic_write(str(path), _half_then_crash)
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_crash_on_first_write_creates_nothing(tmp_path):
    with pytest.raises(Crash):
        atomic_write(str(tmp_path / "sub" / "new.bin"), _half_then_crash)
    assert os.listdir(tmp_path / "sub") == []


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(str(tmp_path / "a"), lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o640  # 0666 & ~0027, not mkstemp's 0600


def test_atomic_torch_save_round_trip_and_crash(tmp_path, monkeypatch):
    path = str(tmp_path / "w.pth")
    atomic_torch_save({"w": torch.arange(3.0)}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial pickle")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.tensor([0.0, 1.0, 2.0]))
    assert os.listdir(tmp_path) == ["w.pth"]


def _kill_mid_write(monkeypatch, target: str, fn) -> None:
    """Run ``fn`` as if the process died while writing ``target``: the temporary stays behind."""
    real_replace = os.replace

    def dying_replace(src, dst):
        if os.path.basename(dst) == target:
            raise SystemExit("killed")  # dies just before the rename
        return real_replace(src, dst)

    real_remove = os.remove
    monkeypatch.setattr(os, "replace", dying_replace)
    monkeypatch.setattr(os, "remove", lambda p: None)  # a killed process removes nothing
    try:
        with pytest.raises(SystemExit):
            fn()
    finally:
        monkeypatch.setattr(os, "replace", real_replace)
        monkeypatch.setattr(os, "remove", real_remove)


def test_remove_stale_temporaries_covers_every_writer(tmp_path, monkeypatch):
    folder = str(tmp_path)
    ckpt = AtomicDetectionCheckpointer(torch.nn.Linear(1, 1), folder)
    writers = {  # target file -> a writer of sact_det that produces it
        "model_0000001.pth": lambda: ckpt.save("model_0000001"),
        "model_0000002.pth": lambda: ClassifierCheckpointer(torch.nn.Linear(1, 1), folder, {}).save("model_0000002"),
        "export.pkl": lambda: write_d2_pkl(os.path.join(folder, "export.pkl"), {"stem.conv1.weight": torch.ones(1)},
                                           {"MODEL.RESNETS.STRIDE_IN_1X1": True}, source="test"),
        "plain.pth": lambda: atomic_torch_save({}, os.path.join(folder, "plain.pth")),
    }
    for target, fn in writers.items():
        _kill_mid_write(monkeypatch, target, fn)
    leftovers = sorted(f for f in os.listdir(folder) if f.startswith("."))
    assert len(leftovers) == 4 and all(f.startswith(TMP_PREFIX) for f in leftovers)
    (tmp_path / "keep.txt").write_text("not a temporary")
    assert remove_stale_temporaries(folder) == 4
    assert sorted(os.listdir(folder)) == ["keep.txt"]


def test_checkpointer_method_uses_the_same_cleanup(tmp_path):
    (tmp_path / f"{TMP_PREFIX}model_0000009.pth.abc123").write_bytes(b"partial")
    (tmp_path / "model_0000008.pth").write_bytes(b"complete")
    ckpt = AtomicDetectionCheckpointer(torch.nn.Linear(1, 1), str(tmp_path))
    assert ckpt.remove_stale_temporaries() == 1
    assert os.listdir(tmp_path) == ["model_0000008.pth"]


def test_classification_checkpoint_and_export_contents(tmp_path):
    ClassifierCheckpointer(torch.nn.Linear(1, 2), str(tmp_path), {"seed": 5}).save("model_0000003", iteration=3)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "model_0000003.pth")
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
    assert (saved["seed"], saved["iteration"], sorted(saved["model"])) == (5, 3, ["bias", "weight"])
    write_d2_pkl(str(tmp_path / "w.pkl"), {"stem.conv1.weight": torch.full((2,), 0.5)},
                 {"MODEL.RESNETS.STRIDE_IN_1X1": True}, source="test")
    with open(tmp_path / "w.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["model"]["stem.conv1.weight"].tolist() == [0.5, 0.5]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]
