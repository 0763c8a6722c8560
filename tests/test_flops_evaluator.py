"""FlopsEvaluator: statistics against hand-computed values and an independent ResNet FLOPs formula."""
import pytest
import torch

from sact_det.evaluation.flops_evaluator import FlopsEvaluator, format_table, summarize_records, units_from_ponder
from tests.helpers import fvcore_flops, build_tiny_model, disable_halting, tiny_cfg


def _conv(out_hw, cin, cout, k):
    return 2.0 * out_hw * out_hw * cout * k * k * cin


def resnet_bottleneck_flops(size: int, blocks, stride_in_1x1: bool = True, last_stage: int = 4) -> float:
    """Closed-form FLOPs of a standard bottleneck ResNet (stem + stages 2..last_stage) on size x size."""
    hw = size // 2
    flops = _conv(hw, 3, 64, 7)
    hw //= 2  # max pool
    cin, bott, cout = 64, 64, 256
    for s, n in enumerate(blocks[: last_stage - 1]):
        for u in range(n):
            stride = 2 if (u == 0 and s > 0) else 1
            out = hw // stride
            conv1_hw = out if stride_in_1x1 else hw
            flops += _conv(conv1_hw, cin if u == 0 else cout, bott, 1) + _conv(out, bott, bott, 3) + _conv(out, bott, cout, 1)
            if u == 0:
                flops += _conv(out, cin, cout, 1)
            hw = out
        cin, bott, cout = cout, bott * 2, cout * 2
    return flops


def test_closed_form_matches_published_resnet101():
    # the original code: its dense ResNet-101 costs 1.5603e10 FLOPs at 224x224
    # (all four stages + the 2048 -> 1000 classifier, stride in the 3x3 conv); validates the formula.
    total = resnet_bottleneck_flops(224, [3, 4, 23, 3], stride_in_1x1=False, last_stage=5) + 2.0 * 2048 * 1000
    assert total == pytest.approx(1.5603e10, rel=1e-4)


def test_units_from_ponder_reference_vectors():
    # rho = N + R with R in (eps, 1]: the reference vectors of tests/test_act.py (2.0 -> 1, 3.49 -> 3, 5.96 -> 5), R = 1 exactly.
    rho = torch.tensor([2.0, 3.49, 5.96, 4.0, 1.5])
    assert units_from_ponder(rho).tolist() == [1, 3, 5, 3, 1]


def test_summarize_records_hand_computed():
    recs = [
        {"backbone": 1e9, "model": 2e9, "dense": 4e9, "reference": 8e9, "ponder": {"res3": (2.5, 2.0)}},
        {"backbone": 3e9, "model": 4e9, "dense": 4e9, "reference": 8e9, "ponder": {"res3": (3.5, 3.0)}},
    ]
    flops, ponder = summarize_records(recs, {"res3": 4}, 101)
    assert flops["num_images"] == 2
    assert flops["extractor_gflops_mean"] == pytest.approx(2.0) and flops["extractor_gflops_std"] == pytest.approx(1.0)
    assert flops["pct_of_dense_mean"] == pytest.approx(50.0) and flops["pct_of_dense_std"] == pytest.approx(25.0)
    assert flops["pct_of_r101_mean"] == pytest.approx(25.0) and flops["pct_of_r101_std"] == pytest.approx(12.5)
    assert flops["model_gflops_mean"] == pytest.approx(3.0)
    assert ponder["res3_mean"] == pytest.approx(3.0) and ponder["res3_std"] == pytest.approx(0.5)
    assert ponder["res3_units_mean"] == pytest.approx(2.5) and ponder["units_frac"] == pytest.approx(2.5 / 4)
    table = format_table(flops, ponder, 101)
    assert "2.000 ± 1.000" in table and "50.0 ± 25.0" in table and "2.50 / 4" in table


def _evaluate(model, cfg, sizes):
    torch.manual_seed(1)
    inputs = [{"image": torch.rand(3, h, w) * 255, "height": h, "width": w, "image_id": i}
              for i, (h, w) in enumerate(sizes)]
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    ev = FlopsEvaluator(cfg, "test", distributed=False)
    ev.reset()
    ev.process(inputs, outputs)
    return ev.evaluate(), outputs


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_reference_is_dense_resnet101_extractor(stride_in_1x1):
    cfg = tiny_cfg(depth=101, mode="none")
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    ev = FlopsEvaluator(cfg, "test", distributed=False)
    expect = resnet_bottleneck_flops(128, [3, 4, 23, 3], stride_in_1x1=stride_in_1x1)
    ev.process([{"image": torch.zeros(3, 128, 128)}], [{"flops": {"backbone": expect, "model": 2 * expect}}])
    res = ev.evaluate()
    assert res["flops"]["r101_gflops_mean"] == pytest.approx(expect / 1e9, rel=1e-12)
    assert res["flops"]["dense_gflops_mean"] == pytest.approx(expect / 1e9, rel=1e-12)  # model = dense R-101
    assert res["flops"]["pct_of_r101_mean"] == pytest.approx(100.0)
    assert res["flops"]["pct_of_dense_mean"] == pytest.approx(100.0)
    assert "ponder_eval" not in res


def test_sact_model_without_halting_runs_every_unit():
    model = build_tiny_model(depth=18)
    disable_halting(model)
    cfg = tiny_cfg(depth=18)
    res, outputs = _evaluate(model, cfg, [(64, 96), (96, 64)])
    flops, ponder = res["flops"], res["ponder_eval"]
    assert flops["num_images"] == 2
    expect = sum(o["flops"]["backbone"] for o in outputs) / 2 / 1e9
    assert flops["extractor_gflops_mean"] == pytest.approx(expect)
    # every unit runs, plus the halting branches: slightly more than the dense same architecture
    assert 100.0 < flops["pct_of_dense_mean"] < 105.0
    for stage in ("res2", "res3", "res4"):
        assert ponder[f"{stage}_units_mean"] == pytest.approx(2.0)  # 2 units per stage
        assert ponder[f"{stage}_units_max"] == 2
        assert ponder[f"{stage}_mean"] == pytest.approx(3.0, abs=1e-4)  # N = 2, R = 1 - h ~ 1
    assert ponder["units_frac"] == pytest.approx(1.0)


def test_halting_everywhere_after_first_unit():
    cfg = tiny_cfg(depth=18)
    cfg.MODEL.SACT.HALT_BIAS_INIT = 10.0  # h ~ 1 > 1 - eps: every position halts at unit 0
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    model = build_model(cfg)
    res, _ = _evaluate(model, cfg, [(64, 64)])
    assert res["ponder_eval"]["units_frac"] == pytest.approx(0.5)
    assert res["ponder_eval"]["res3_mean"] == pytest.approx(2.0, abs=1e-3)  # N = 1, R = 1
    assert res["flops"]["pct_of_dense_mean"] < 60.0


def test_missing_flops_output_is_a_clear_error():
    ev = FlopsEvaluator(tiny_cfg(depth=18), "test", distributed=False)
    with pytest.raises(KeyError, match="AdaptiveRCNN"):
        ev.process([{"image": torch.zeros(3, 32, 32)}], [{"instances": None}])


def test_no_images_gives_empty_results():
    ev = FlopsEvaluator(tiny_cfg(depth=18), "test", distributed=False)
    assert ev.evaluate() == {}


# --- cfg.MODEL.SACT.VARIANT original: the reference is the original code's dense ResNet v2 ---------------

def _original_cfg(mode: str = "none", units=(1, 1, 1, 1), base: int = 2):
    from tests.test_original_detector import _detector_cfg

    cfg = _detector_cfg()  # tiny original-variant Faster R-CNN C4 (blocks 1-3 backbone, block 4 + postnorm head)
    cfg.MODEL.SACT.MODE = mode
    cfg.MODEL.SACT.ORIGINAL_UNITS = list(units)
    cfg.MODEL.SACT.ORIGINAL_BASE_CHANNELS = base
    return cfg


def test_original_variant_dense_model_is_100_percent_of_its_own_dense_extractor():
    from detectron2.modeling import build_model

    cfg = _original_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    sizes = [(64, 80), (65, 81)]
    res, outputs = _evaluate(model, cfg, sizes)
    flops = res["flops"]
    assert flops["pct_of_dense_mean"] == pytest.approx(100.0, abs=1e-9) and flops["pct_of_dense_std"] == 0.0
    own = [fvcore_flops(model.backbone, hw) for hw in sizes]  # independent count on the real backbone
    assert flops["dense_gflops_mean"] == pytest.approx(sum(own) / 2 / 1e9, rel=1e-12)
    assert [o["flops"]["backbone"] for o in outputs] == pytest.approx(own, rel=1e-12)
    assert "v2 (original)" in format_table(flops, {}, 101, "original")


def test_original_variant_reference_is_dense_resnet101_v2_not_detectron2_v1():
    cfg = _original_cfg()
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1  # the detectron2 default: a v1 reference would put the stride in conv1
    ev = FlopsEvaluator(cfg, "test", distributed=False)
    ev.process([{"image": torch.zeros(3, 128, 128)}], [{"flops": {"backbone": 1e9, "model": 2e9}}])
    res = ev.evaluate()["flops"]
    v2 = resnet_bottleneck_flops(128, [3, 4, 23, 3], stride_in_1x1=False)  # v2: stride in the 3x3 conv, biases free
    v1 = resnet_bottleneck_flops(128, [3, 4, 23, 3], stride_in_1x1=True)
    assert v1 != pytest.approx(v2, rel=1e-3)
    assert res["r101_gflops_mean"] == pytest.approx(v2 / 1e9, rel=1e-12)
    assert res["pct_of_r101_mean"] == pytest.approx(100.0 * 1e9 / v2, rel=1e-12)


def test_original_variant_reference_equals_fvcore_on_a_real_resnet50_v2():
    """The dense v2 reference at an odd size (TF 'SAME' arithmetic) = 2 x fvcore's conv FLOPs of the
    original-variant backbone built by the detector's own builder with DEPTH 50 (standard widths)."""
    from detectron2.modeling import build_backbone

    cfg = _original_cfg(units=(), base=64)
    cfg.MODEL.RESNETS.DEPTH = 50
    ev = FlopsEvaluator(cfg, "test", distributed=False, reference_depth=50)
    hw = (65, 81)
    ev.process([{"image": torch.zeros(3, *hw)}], [{"flops": {"backbone": 1e9, "model": 2e9}}])
    res = ev.evaluate()["flops"]
    torch.manual_seed(0)
    expect = fvcore_flops(build_backbone(cfg), hw)
    assert res["r50_gflops_mean"] == pytest.approx(expect / 1e9, rel=1e-12)
    assert res["dense_gflops_mean"] == pytest.approx(expect / 1e9, rel=1e-12)  # this model is the dense R-50 v2
