"""Ponder map -> saliency post-processing, baselines and config keys, on synthetic maps."""
import inspect
import math

import numpy as np
import pytest
import torch

import sact_det  # noqa: F401
from sact_det.config import get_sact_cfg
from sact_det.evaluation import saliency as S
from sact_det.modeling.core.ponder_maps import sum_ponder_maps


def _cfg(**kw):
    cfg = get_sact_cfg()
    for k, v in kw.items():
        setattr(cfg.SACT_SALIENCY, k, v)
    return cfg


def test_config_keys_registered_and_commented():
    c = get_sact_cfg().SACT_SALIENCY  # added by add_sact_config
    assert c.TEMPERATURE == pytest.approx(0.2) and list(c.INPUT_SIZE) == [640, 360]
    lines = inspect.getsource(S.add_saliency_config).splitlines()
    for key in c:
        i = next(i for i, ln in enumerate(lines) if f"c.{key} =" in ln)
        assert "  # " in lines[i] or lines[i - 1].strip().startswith("# "), f"SACT_SALIENCY.{key}: no comment"


@pytest.mark.parametrize("key, value", [
    ("TEMPERATURE", 0.0), ("NORMALIZE", "l2"), ("METHODS", ["sact", "x"]), ("INPUT_SIZE", [640, 0]),
    ("INFO_GAIN_BASELINE", "sact"),
])
def test_invalid_config_names_key(key, value):
    with pytest.raises(ValueError, match=f"cfg.SACT_SALIENCY.{key}"):
        S.validate_saliency_cfg(_cfg(**{key: value}))


def test_softmax_with_temperature_by_hand():
    # no resize / blur: softmax(map / T) with T = 0.5 of [[0, 1], [0, 0]] -> (1, e^2, 1, 1) / (3 + e^2)
    c = _cfg(BLUR_SIGMA=0.0, TEMPERATURE=0.5, WORK_MAX_SIZE=0).SACT_SALIENCY
    out = S.ponder_to_saliency(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), (2, 2), c)
    e2 = math.exp(2)
    np.testing.assert_allclose(out, np.array([[1, e2], [1, 1]]) / (3 + e2), rtol=1e-6)


def test_lower_temperature_is_sharper_and_peak_is_kept():
    p = np.zeros((9, 16))
    p[2, 3] = 5.0  # bump in the top-left quadrant
    hot = S.ponder_to_saliency(p, (90, 160), _cfg(TEMPERATURE=1.0).SACT_SALIENCY)
    cold = S.ponder_to_saliency(p, (90, 160), _cfg(TEMPERATURE=0.2).SACT_SALIENCY)
    for m in (hot, cold):
        assert m.shape == (90, 160) and m.sum() == pytest.approx(1.0) and m.min() >= 0
        y, x = np.unravel_index(np.argmax(m), m.shape)
        assert y < 45 and x < 80
    assert cold.max() > hot.max()


def test_center_prior_on_flat_map_is_the_center_baseline():
    c = _cfg(CENTER_PRIOR_WEIGHT=1.0, BLUR_SIGMA=0.0, WORK_MAX_SIZE=0).SACT_SALIENCY
    out = S.ponder_to_saliency(np.full((5, 8), 3.0), (20, 32), c)
    np.testing.assert_allclose(out, S.center_bias_map((20, 32), 0.25), rtol=1e-5)


def test_minmax_normalisation_removes_scale_and_offset():
    rng = np.random.default_rng(0)
    p = rng.random((6, 10))
    c = _cfg(NORMALIZE="minmax").SACT_SALIENCY
    np.testing.assert_allclose(S.ponder_to_saliency(10 * p + 3, (30, 50), c),
                               S.ponder_to_saliency(p, (30, 50), c), rtol=1e-9)


def test_center_bias_map_by_hand():
    # w = 8, sigma_frac .25 -> sigma_x = 2 px; pixel centres x = -3.5 .. 3.5
    g = S.center_bias_map((4, 8), 0.25)
    assert g.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(g, g[::-1, ::-1])  # symmetric
    # x = 0.5 vs x = 2.5: ratio exp(-0.5 * (2.5^2 - 0.5^2) / 2^2) = exp(-0.75)
    assert g[1, 6] / g[1, 4] == pytest.approx(math.exp(-0.75))
    np.testing.assert_allclose(S.uniform_map((3, 4)), np.full((3, 4), 1 / 12))


def test_mean_fixation_baseline_leaves_own_image_out():
    base = S.MeanFixationBaseline([4, 2])  # (width, height)
    maps = {}
    for k, (y, x) in enumerate([(0, 0), (1, 3), (0, 2)]):
        m = np.zeros((2, 4))
        m[y, x] = 2.0  # sum-normalised on add
        maps[k] = m / 2.0
        base.add(k, m)
    np.testing.assert_allclose(base.map_for(0, (2, 4)), (maps[1] + maps[2]) / 2)
    np.testing.assert_allclose(base.map_for("new", (2, 4)), (maps[0] + maps[1] + maps[2]) / 3)
    one = S.MeanFixationBaseline([4, 2])
    one.add("a", np.ones((2, 4)))
    with pytest.raises(ValueError, match="at least one other image"):
        one.map_for("a", (2, 4))


def test_resize_and_stage_sum():
    assert np.allclose(S.resize_map(np.full((3, 5), 2.0), (30, 50)), 2.0)
    assert np.allclose(S.resize_map(np.full((30, 50), 2.0), (3, 5)), 2.0)
    total = sum_ponder_maps([torch.ones(4, 4), torch.full((2, 2), 2.0)])
    assert torch.allclose(total, torch.full((4, 4), 3.0))
    with pytest.raises(ValueError, match="ponder_map"):
        S.ponder_to_saliency(np.zeros(5), (4, 4), _cfg().SACT_SALIENCY)
