"""FlopsEvaluator: statistics against hand-computed values and an independent ResNet FLOPs formula."""
import pytest
import torch

from sact_det.evaluation.flops_evaluator import FlopsEvaluator, format_table, summarize_records, units_from_ponder
from tests.helpers import build_tiny_model, disable_halting, tiny_cfg


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
    # REFERENCE.md: the dense ResNet-101 of the original code costs 1.5603e10 FLOPs at 224x224
    # (all four stages + the 2048 -> 1000 classifier, stride in the 3x3 conv); validates the formula.
    total = resnet_bottleneck_flops(224, [3, 4, 23, 3], stride_in_1x1=False, last_stage=5) + 2.0 * 2048 * 1000
    assert total == pytest.approx(1.5603e10, rel=1e-4)


def test_units_from_ponder_reference_vectors():
    # rho = N + R with R in (eps, 1]: REFERENCE.md vectors (2.0 -> 1, 3.49 -> 3, 5.96 -> 5), R = 1 exactly.
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
    with pytest.raises(KeyError, match="SACTRCNN"):
        ev.process([{"image": torch.zeros(3, 32, 32)}], [{"instances": None}])


def test_no_images_gives_empty_results():
    ev = FlopsEvaluator(tiny_cfg(depth=18), "test", distributed=False)
    assert ev.evaluate() == {}
