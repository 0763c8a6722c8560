"""The seeds' printout (block usage, FLOPs/img, unique policies, per-unit rates) by hand, the
evaluator over detector outputs, and the policy picture."""
import numpy as np
import pytest

from sact_det.evaluation.unit_stats import (UnitPolicyEvaluator, draw_unit_policy, format_unit_policy_stats,
                                          unit_policy_stats)

POLICIES = [
    {"res2.0": True, "res2.1": False, "res3.0": True},
    {"res2.0": True, "res2.1": True, "res3.0": True},
    {"res2.0": True, "res2.1": False, "res3.0": True},
    {"res2.0": False, "res2.1": False, "res3.0": True},
]


def test_stats_by_hand():
    s = unit_policy_stats(POLICIES, [2.0, 4.0, 2.0, 0.0])
    used = np.array([2, 3, 2, 1])
    assert s["block_usage_mean"] == 2.0 and s["block_usage_std"] == pytest.approx(float(used.std()))  # sqrt(0.5)
    assert s["unique_policies"] == 3
    assert s["unit_rates"] == {"res2.0": 0.75, "res2.1": 0.25, "res3.0": 1.0}
    assert s["flops_mean"] == 2.0 and s["flops_std"] == pytest.approx(2 ** 0.5)
    text = format_unit_policy_stats(s)
    assert "Block Usage: 2.000 \u00b1 0.707" in text and "FLOPs/img: 2.00E+00 \u00b1 1.41E+00" in text
    assert "Unique Policies: 3" in text and "res2.1:0.25" in text


def test_mismatched_inputs_raise():
    with pytest.raises(ValueError, match="different units"):
        unit_policy_stats([{"a.0": True}, {"b.0": True}])
    with pytest.raises(ValueError, match="3 FLOP values for 4 policies"):
        unit_policy_stats(POLICIES, [1.0, 2.0, 3.0])


def test_evaluator_collects_detector_outputs(caplog):
    caplog.set_level("INFO", logger="sact_det.evaluation.unit_stats")
    ev = UnitPolicyEvaluator(distributed=False)
    ev.reset()
    outs = [{"unit_policy": p, "flops": {"backbone": f, "model": f + 1}} for p, f in zip(POLICIES, [2.0, 4.0, 2.0, 0.0])]
    ev.process([{}] * 2, outs[:2])
    ev.process([{}] * 3, outs[2:] + [{"instances": None, "flops": {"backbone": 9.0, "model": 9.0}}])  # a SACT output
    res = ev.evaluate()["unit_policy"]
    assert res["num_images"] == 4 and res["unique_policies"] == 3 and res["rate/res2.1"] == 0.25
    assert "Unique Policies: 3" in caplog.text
    empty = UnitPolicyEvaluator(distributed=False)
    empty.process([{}], [{"flops": {"backbone": 1.0, "model": 1.0}}])
    assert empty.evaluate() == {}


def test_policy_picture():
    img = draw_unit_policy({"res2.0": True, "res2.1": False, "res3.0": 0.5}, cell=10)
    assert img.shape == (20, 20, 3) and img.dtype == np.uint8
    assert tuple(img[5, 5]) == (255, 140, 0) and tuple(img[5, 15]) == (25, 35, 90)  # executed / skipped
    assert tuple(img[15, 15]) == (255, 255, 255)  # res3 has one unit: the rest of its row is blank
