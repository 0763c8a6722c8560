"""tools/draw_ponder_maps.py on classifier configs (the original code's ponder maps on whole images).

Independent expectations: the image is decoded, resized and scaled to [-1, 1] here with PIL / numpy, the
drawn map (captured from matplotlib's imshow) is rebuilt from the classifier's own ``model.ponders`` with
index arithmetic (nearest: src = floor(dst * in / out)), the PNG size from the documented layout, and
(when ../shared is present) the ponder costs and logits from the original TensorFlow code's outputs.
"""
import os
import re
import sys
from pathlib import Path

import matplotlib
import matplotlib.axes
import matplotlib.figure
import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import draw_ponder_maps  # noqa: E402

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"
BASE_CFG = REPO / "configs" / "Classification" / "imagenet_R_101_sact_tau0.005_original.yaml"


def _write_cfg(tmp_path: Path, units=(2, 2, 2, 2), base: int = 2) -> str:
    path = tmp_path / "tiny_original.yaml"
    path.write_text(f'_BASE_: "{BASE_CFG}"\nMODEL:\n  DEVICE: "cpu"\n  SACT:\n'
                    f"    ORIGINAL_UNITS: {list(units)}\n    ORIGINAL_BASE_CHANNELS: {base}\n")
    return str(path)


def _classifier(cfg_file: str):
    from sact_det.classification import get_classification_cfg
    from sact_det.modeling.meta_arch.classifier import build_classifier

    cfg = get_classification_cfg()
    cfg.merge_from_file(cfg_file)
    cfg.MODEL.DEVICE = "cpu"
    return cfg, build_classifier(cfg, 1000)  # + background class: 1001 logits


def _tiny_weights(tmp_path: Path, cfg_file: str) -> str:
    from tests.helpers import randomize_bn

    torch.manual_seed(0)
    _, model = _classifier(cfg_file)
    randomize_bn(model, seed=1)
    for name, p in model.named_parameters():  # spread the halting scores: some positions halt after unit 0
        if ".halting." in name and name.endswith("conv.bias"):
            p.data.fill_(2.0)
    path = tmp_path / "tiny_classifier.pth"
    torch.save({"model": model.state_dict(), "sact_cls_format": 1}, path)  # a classifier checkpoint
    return str(path)


def _jpeg(path: Path, w: int, h: int) -> str:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)
    img[h // 4: h // 2, w // 3: 2 * w // 3] = (250, 30, 30)
    Image.fromarray(img).save(path, quality=95)
    return str(path)


def _capture_imshow(monkeypatch) -> list:
    shown = []
    orig = matplotlib.axes.Axes.imshow

    def imshow(self, x, *a, **k):
        shown.append(np.array(x))
        return orig(self, x, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    return shown


def _nearest(m: np.ndarray, out_hw) -> np.ndarray:
    """TF / PyTorch legacy nearest resize: out[i, j] = m[floor(i * h / H), floor(j * w / W)]."""
    iy = (np.arange(out_hw[0]) * m.shape[0]) // out_hw[0]
    ix = (np.arange(out_hw[1]) * m.shape[1]) // out_hw[1]
    return m[iy][:, ix]


def _expected_map(stage_maps, image_hw, stride: int = 4) -> np.ndarray:
    """Stage maps summed on the finest (first, stride 4) stage grid with nearest resizing; then pixel
    (y, x) of the image shows grid cell (y // 4, x // 4)."""
    total = sum(_nearest(m, stage_maps[0].shape) for m in stage_maps)
    return np.repeat(np.repeat(total, stride, 0), stride, 1)[: image_hw[0], : image_hw[1]]


def test_classifier_ponder_map_png_and_drawn_map(tmp_path, monkeypatch):
    cfg_file = _write_cfg(tmp_path)
    weights = _tiny_weights(tmp_path, cfg_file)
    photo = _jpeg(tmp_path / "photo.jpg", 120, 90)
    shown = _capture_imshow(monkeypatch)
    out = tmp_path / "maps"
    written = draw_ponder_maps.main(["--config-file", cfg_file, "--input", photo, "--output", str(out),
                                     "--max-size", "100", "MODEL.WEIGHTS", weights])
    assert written == [str(out / "photo_ponder.png")]
    # resized 120x90 -> 100x75; panels enlarged x3.2 to 320x240; width 3*10 + 2*320 + 15 + 60, height 56 + 240 + 10
    with Image.open(written[0]) as png:
        assert png.size == (745, 306)

    # independent preprocessing: PIL bicubic shrink, [0, 255] -> [-1, 1]
    resized = np.asarray(Image.open(photo).convert("RGB").resize((100, 75), Image.BICUBIC))
    assert len(shown) == 2 and np.array_equal(shown[0], resized)
    x = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    _, model = _classifier(cfg_file)
    model.load_state_dict(torch.load(weights)["model"])
    model.eval()
    with torch.no_grad():
        logits = model(x)[0]
    stages = [model.ponders[s].ponder_cost[0, 0].numpy() for s in ("res2", "res3", "res4", "res5")]
    assert stages[0].shape == (19, 25)  # ceil(75 / 4), ceil(100 / 4): TF 'SAME' arithmetic
    expect = _expected_map(stages, (75, 100))
    assert shown[1].shape == (75, 100)
    np.testing.assert_allclose(shown[1], expect, rtol=0, atol=1e-5)
    assert expect.std() > 1e-3  # a map with structure, not a constant
    assert 4 * 1.0 < expect.min() and expect.max() <= 4 * 3.0  # 4 stages of 2 units: rho in (1, 3] each


def test_library_result_top5_and_scale(tmp_path):
    from sact_det.classification import get_classification_cfg
    from sact_det.classification.ponder_maps import classifier_ponder_map, load_drawing_classifier, title_lines
    from sact_det.engine.setup_config import load_config

    cfg_file = _write_cfg(tmp_path)
    weights = _tiny_weights(tmp_path, cfg_file)
    cfg = load_config(cfg_file, ["MODEL.WEIGHTS", weights], base=get_classification_cfg())
    model = load_drawing_classifier(cfg)
    assert model.linear.out_features == 1001  # class count read from the weights (+ background)
    small = _jpeg(tmp_path / "small.jpg", 40, 30)
    res = classifier_ponder_map(model, cfg, small, max_size=640)  # never enlarged
    assert res.image.shape == (30, 40, 3) and res.ponder_image.shape == (30, 40)
    top = res.topk()
    order = torch.argsort(res.logits, descending=True)[:5].tolist()
    assert [i for i, _ in top] == order
    p = torch.softmax(res.logits.double(), 0)
    assert [v for _, v in top] == pytest.approx(p[order].tolist())
    lines = title_lines(res, background_class=True)
    assert "index 0 = background" in lines[1] and f"{order[0]} (" in lines[1]
    assert 0 < res.flops < res.dense_flops * 1.1


def test_errors_name_the_problem(tmp_path):
    cfg_file = _write_cfg(tmp_path)
    photo = _jpeg(tmp_path / "photo.jpg", 40, 30)
    common = ["--config-file", cfg_file, "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=r"MODEL\.WEIGHTS is empty.*--random-weights"):
        draw_ponder_maps.main(common + ["--input", photo])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit, match=r"bad\.jpg"):
        draw_ponder_maps.main(common + ["--input", str(bad), "--random-weights", "SACT_CLS.NUM_CLASSES", "1000"])
    with pytest.raises(SystemExit, match=r"no image matches"):
        draw_ponder_maps.main(common + ["--input", str(tmp_path / "none" / "*.jpg"), "--random-weights"])
    with pytest.raises(SystemExit, match=r"SACT_CLS\.NUM_CLASSES"):  # random weights: no class count to read
        draw_ponder_maps.main(common + ["--input", photo, "--random-weights"])
    written = draw_ponder_maps.main(common + ["--input", photo, "--random-weights", "SACT_CLS.NUM_CLASSES", "10"])
    assert len(written) == 1 and os.path.isfile(written[0])


@pytest.mark.skipif(not (ORACLE / "README.md").is_file(), reason=f"the original code's outputs ({ORACLE}) are absent")
def test_oracle_checkpoint_map_equals_the_original_ponder_cost(tmp_path, monkeypatch):
    """Converted oracle ImageNet SACT net on its own (lossless PNG) image: the drawn map is the original
    code's per-block ponder cost, summed and upsampled; the top-5 are the original's logits' top-5."""
    from sact_det.convert.original import convert_tf_checkpoint

    weights = convert_tf_checkpoint(str(ORACLE / "imagenet_small_sact" / "varied" / "model.ckpt"),
                                    str(tmp_path / "converted"), log=lambda m: None)["classifier"]
    with np.load(ORACLE / "imagenet_small_sact" / "varied.npz") as z:
        pixels, logits = z["even/pixels"][0], z["even/logits"][0]
        blocks = [z[f"even/block{k}/ponder_cost"][0] for k in range(1, 5)]
    Image.fromarray(pixels).save(tmp_path / "even.png")
    shown = _capture_imshow(monkeypatch)
    texts = []
    orig_text = matplotlib.figure.Figure.text
    monkeypatch.setattr(matplotlib.figure.Figure, "text",
                        lambda self, x, y, s, *a, **k: texts.append(s) or orig_text(self, x, y, s, *a, **k))
    draw_ponder_maps.main(["--config-file", _write_cfg(tmp_path, units=(3, 3, 4, 2)), "--input",
                           str(tmp_path / "even.png"), "--output", str(tmp_path / "o"), "--max-size", "0",
                           "MODEL.WEIGHTS", weights])
    expect = _expected_map(blocks, pixels.shape[:2])
    assert shown[1].shape == pixels.shape[:2]
    np.testing.assert_allclose(shown[1], expect, rtol=0, atol=5e-5 * max(1.0, float(np.abs(expect).max())))
    top5 = np.argsort(-logits)[:5]
    assert np.all(-np.diff(logits[top5]) > 1e-3)  # well separated: the order is not float noise
    line = [t for t in texts if "top-5" in t][0].split("\n")[1].split(": ", 1)[1]
    assert [int(v) for v in re.findall(r"(\d+) \(", line)] == top5.tolist()
