"""tools/train_classifier.py --eval-only on converted oracle checkpoints prints the original code's FLOPs
and ponder statistics for the oracle's images (CIFAR-10 pickle batch and ImageNet folder made from its
pixels). Skipped without ../shared/oracle."""
import re
from pathlib import Path

import numpy as np
import pytest

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"
pytestmark = pytest.mark.skipif(not (ORACLE / "README.md").is_file(),
                                reason=f"the original code's outputs ({ORACLE}) are not available")



def _convert(model: str, variant: str, out: Path) -> str:
    from sact_det.convert.original import convert_tf_checkpoint

    return convert_tf_checkpoint(str(ORACLE / model / variant / "model.ckpt"), str(out), log=lambda m: None)["classifier"]


def _printed(text: str, name: str) -> float:
    m = re.search(re.escape(name) + r"\[([-+0-9.eE]+)", text)
    assert m, f"{name} not printed:\n{text}"
    return float(m.group(1))


def _expected(npz: dict, sets, blocks, stages):
    """Per-image statistics of the original code (flops_total, per-block flops / ponder / num_units)."""
    flops = np.concatenate([npz[f"{s}/flops_total"] for s in sets]).astype(np.float64)
    exp = {"Total Flops/mean": flops.mean(), "Total Flops/std": flops.std()}
    for block, stage in zip(blocks, stages):
        def per_image(key: str) -> np.ndarray:
            arrays = [npz[f"{s}/{block}/{key}"].astype(np.float64) for s in sets]
            return np.concatenate([a.reshape(a.shape[0], -1).mean(1) for a in arrays])

        exp[f"{stage}/flops_mean"] = per_image("flops").mean()
        exp[f"{stage}/ponder_cost_mean"] = per_image("ponder_cost").mean()
        exp[f"{stage}/num_units_mean"] = per_image("num_units").mean()
    return exp


def _run(args_list, capsys):
    from tools.train_classifier import get_parser, main

    metrics = main(get_parser().parse_args(args_list))
    return metrics, capsys.readouterr().out


def _check(printed: str, expected: dict) -> None:
    for name, value in expected.items():
        got = _printed(printed, name)
        if "Flops" in name or "flops" in name:
            assert got == pytest.approx(value, rel=2e-8, abs=0.5), name  # 8 significant digits printed
        else:
            assert got == pytest.approx(value, rel=1e-5), name


def test_eval_only_cifar_prints_original_flops_and_ponder(tmp_path, capsys, restore_loggers):
    from sact_det.data.classification import write_cifar10_batch

    weights = _convert("cifar_resnet32_sact", "varied", tmp_path / "converted")
    with np.load(ORACLE / "cifar_resnet32_sact" / "varied.npz") as z:
        npz = {k: z[k] for k in z.files}
    labels = npz["x/logits"].argmax(1)
    root = tmp_path / "cifar"
    root.mkdir()
    write_cifar10_batch(str(root / "test_batch"), npz["x/pixels"], labels)
    metrics, out = _run([
        "--config-file", "configs/Classification/cifar10_resnet32_sact_tau0.01_original.yaml", "--eval-only",
        "--no-progress", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", "SACT_CLS.DATA.ROOT", str(root),
        "SACT_CLS.TEST.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out")], capsys)
    _check(out, _expected(npz, ["x"], ["block_1", "block_2", "block_3"], ["res2", "res3", "res4"]))
    assert metrics["top1"] == 1.0 and metrics["num_images"] == 2


def test_eval_only_imagenet_folder_prints_original_flops_and_ponder(tmp_path, capsys, restore_loggers):
    from PIL import Image

    weights = _convert("imagenet_small_sact", "varied", tmp_path / "converted")
    with np.load(ORACLE / "imagenet_small_sact" / "varied.npz") as z:
        npz = {k: z[k] for k in z.files}
    val = tmp_path / "imagenet" / "val"
    for c in range(1000):  # 1000 classes -> 1001 logits with SACT_CLS.BACKGROUND_CLASS (class 0 = background)
        (val / f"n{c:04d}").mkdir(parents=True)
        if c >= 2:
            Image.new("RGB", (1, 1)).save(val / f"n{c:04d}" / "x.png")
    Image.fromarray(npz["even/pixels"][0]).save(val / "n0000" / "even.png")  # label 0 -> class 1
    Image.fromarray(npz["odd/pixels"][0]).save(val / "n0001" / "odd.png")  # label 1 -> class 2
    metrics, out = _run([
        "--config-file", "configs/Classification/imagenet_R_101_sact_tau0.005_original.yaml", "--eval-only",
        "--no-progress", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", "SACT_CLS.DATA.ROOT", str(tmp_path / "imagenet"),
        "MODEL.SACT.ORIGINAL_UNITS", "[3, 3, 4, 2]", "MODEL.SACT.ORIGINAL_BASE_CHANNELS", "2",
        "SACT_CLS.INPUT.CROP_SIZE", "0", "SACT_CLS.INPUT.CENTRAL_FRACTION", "1.0",  # the oracle images have the net's size
        "SACT_CLS.DATA.MAX_TEST_IMAGES", "2", "SACT_CLS.TEST.IMS_PER_BATCH", "1", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path / "out")], capsys)
    _check(out, _expected(npz, ["even", "odd"], ["block1", "block2", "block3", "block4"], ["res2", "res3", "res4", "res5"]))
    logits = np.concatenate([npz["even/logits"], npz["odd/logits"]])
    assert metrics["top1"] == float(np.mean(logits.argmax(1) == np.array([1, 2])))
    assert metrics["num_images"] == 2
