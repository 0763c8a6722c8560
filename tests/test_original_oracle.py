"""The original SACT networks (cfg.MODEL.SACT.VARIANT original) against the original TF code's outputs.

Reads ../shared/oracle (outputs of github.com/mfigurnov/sact run under TF, see its README): for every
model, variant and input set, the TF checkpoint is converted with sact_det.convert into the model
built from config; units per position and FLOPs must be identical, every float array within
5e-5 * max(1, max|ref|). Skipped when the oracle folder is absent (a clone without ../shared).
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"
pytestmark = pytest.mark.skipif(not (ORACLE / "README.md").is_file(),
                                reason=f"the original code's outputs ({ORACLE}) are not available")


from sact_det.modeling.original.oracle import ORACLE_MODELS, check_oracle_model, oracle_config, report_table  # noqa: E402


def _npz(model: str, variant: str) -> dict:
    with np.load(ORACLE / model / f"{variant}.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def reports():
    return {m: check_oracle_model(str(ORACLE / m)) for m in ORACLE_MODELS}


@pytest.mark.parametrize("model", ORACLE_MODELS)
def test_equal_to_original(reports, model):
    """Integers exact, floats within tolerance, every oracle key compared, both variants and input sets."""
    runs = reports[model]
    assert sorted(runs) == sorted((v, s) for v in ("init", "varied") for s in _npz(model, v)["input_names"])
    for (variant, input_set), rep in runs.items():
        ref_keys = {k.split("/", 1)[1] for k in _npz(model, variant) if k.startswith(input_set + "/")} - {"pixels", "inputs"}
        assert set(rep) == ref_keys, f"{variant}/{input_set}: not compared: {ref_keys - set(rep)}"
        failed = {k: r for k, r in rep.items() if not r["ok"]}
        assert not failed, f"{model} {variant}/{input_set}: {failed}"
        for key, r in rep.items():
            if r["kind"] == "float":
                assert r["compared"] > 0, key
                act_scores = model.endswith("_act") and key.endswith(("halting_proba_raw", "halting_logit_raw"))
                if not act_scores:  # ACT: only the scores of units an image ran (original_oracle.compare)
                    assert r["compared"] == r["size"], f"{key}: only {r['compared']} of {r['size']} values compared"


def test_report_table(reports):
    table = report_table(reports)
    assert table.count("\n") == 1 + len(ORACLE_MODELS)
    assert "wrong" not in table


@pytest.mark.parametrize("model", ["imagenet_small_sact", "cifar_resnet32_sact"])
def test_original_preprocessing(model):
    """The classifier data pipeline of VARIANT original turns the oracle's pixels into its inputs
    (ImageNet [-1, 1] without crop / resize, the image already has the network size; CIFAR
    per-image standardisation)."""
    from PIL import Image

    from sact_det.data.classification import build_transform

    cfg = oracle_config(json.loads((ORACLE / model / "summary.json").read_text())["config"])
    if cfg.SACT_CLS.ARCH == "imagenet":
        cfg.SACT_CLS.INPUT.CROP_SIZE, cfg.SACT_CLS.INPUT.CENTRAL_FRACTION = 0, 1.0
    transform = build_transform(cfg, train=False)
    data = _npz(model, "init")
    for name in data["input_names"]:
        for pixels, ref in zip(data[f"{name}/pixels"], data[f"{name}/inputs"]):
            got = transform(Image.fromarray(pixels)).permute(1, 2, 0).numpy()
            assert got.shape == ref.shape
            assert np.abs(got - ref).max() <= 5e-5 * max(1.0, np.abs(ref).max())


def test_halting_init_like_the_original():
    """Halting (and all other) conv weights start like TF-slim's variance_scaling_initializer in the
    original arg scope: a 2-sigma truncated normal with std sqrt(2 / fan_in), as in the oracle's
    'init' checkpoints."""
    from sact_det.convert.tf_checkpoint import read_tf_checkpoint

    tf_vars = read_tf_checkpoint(str(ORACLE / "cifar_resnet32_sact" / "init" / "model.ckpt"))
    ref = [(np.std(v) / math.sqrt(2.0 / np.prod(v.shape[:3])), np.abs(v).max() / math.sqrt(2.6 / np.prod(v.shape[:3])))
           for k, v in tf_vars.items() if v.ndim == 4 and v.size >= 2000]
    torch.manual_seed(0)
    from sact_det.modeling.meta_arch.classifier import build_classifier

    fresh = build_classifier(oracle_config(json.loads((ORACLE / "cifar_resnet32_sact" / "summary.json").read_text())["config"]))
    mine = [(float(p.detach().std()) / math.sqrt(2.0 / p[0].numel()), float(p.detach().abs().max()) / math.sqrt(2.6 / p[0].numel()))
            for n, p in fresh.named_parameters() if p.dim() == 4 and p.numel() >= 2000]
    for stats in (ref, mine):
        assert 0.95 < np.mean([s for s, _ in stats]) < 1.05
        assert max(m for _, m in stats) <= 2.0 + 1e-5
    halting = [p for n, p in fresh.named_parameters() if n.endswith("halting.local_conv.weight")]
    assert halting and all(float(p.detach().abs().sum()) > 0 for p in halting)
    assert all(float(b.detach()) == -3.0 for n, b in fresh.named_parameters() if n.endswith("halting.local_conv.bias"))
