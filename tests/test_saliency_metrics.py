"""Saliency metrics against hand-computed values and the pysaliency fixture facts."""
import math

import numpy as np
import pytest

import sact_det  # noqa: F401
from sact_det.evaluation.saliency_metrics import (
    auc_borji,
    auc_judd,
    auc_shuffled,
    cc,
    info_gain,
    kl_div,
    nss,
    sim,
)


# --- AUC-Judd ---------------------------------------------------------------------------------
def test_auc_judd_perfect_by_hand():
    # sal 0.1 0.4 0.35 0.8, fixations at 0.4 and 0.8; negatives 0.1, 0.35.
    # t=0.8: tp=1/2 fp=0; t=0.4: tp=1 fp=0 -> curve (0,0)(0,.5)(0,1)(1,1) -> area 1.
    sal = np.array([[0.1, 0.4, 0.35, 0.8]])
    assert auc_judd(sal, np.array([[0, 1, 0, 1]])) == pytest.approx(1.0)


def test_auc_judd_mit_interpolation_by_hand():
    # Fixations at 0.1 and 0.8; negatives 0.4, 0.35.
    # t=0.8: tp=.5 fp=0; t=0.1: tp=1 fp=1 -> (0,0)(0,.5)(1,1)(1,1): area .5*(.5+1) = 0.75
    # (MIT's straight segment between thresholds; the Mann-Whitney AUC would be 0.5).
    sal = np.array([[0.1, 0.4, 0.35, 0.8]])
    assert auc_judd(sal, np.array([[1, 0, 0, 1]])) == pytest.approx(0.75)


def test_auc_judd_ties_are_deterministic_by_hand():
    # sal 1 1 0 0, fixation at pixel 0; negatives 1, 0, 0 (M=3).
    # t=1: tp=1, fp=1/3 -> (0,0)(1/3,1)(1,1): area 1/6 + 2/3 = 5/6 (tied negative counts half).
    sal = np.array([[1.0, 1.0], [0.0, 0.0]])
    fix = np.array([[1, 0], [0, 0]])
    assert auc_judd(sal, fix) == pytest.approx(5 / 6)
    assert auc_judd(sal, fix) == auc_judd(sal, fix)


def test_auc_judd_tied_fixated_values_one_threshold():
    # sal 2 2 1 0 with fixations at both 2s: one threshold t=2 -> tp=1, fp=0 -> area 1.
    # (MIT's un-jittered loop would produce an extra wrong point tp=.5, fp=.5.)
    assert auc_judd(np.array([[2.0, 2.0, 1.0, 0.0]]), np.array([[1, 1, 0, 0]])) == pytest.approx(1.0)


def test_auc_judd_count_weights():
    # sal 0.1 0.4 0.35 0.8, 3 fixations at 0.8, 1 at 0.1; negatives 0.4, 0.35.
    # t=.8: tp=3/4 fp=0; t=.1: tp=1 fp=1 -> area .5*(.75+1) = 0.875
    sal = np.array([[0.1, 0.4, 0.35, 0.8]])
    assert auc_judd(sal, np.array([[1, 0, 0, 3]])) == pytest.approx(0.875)


def _mit_auc_judd_loop(sal, fix):
    """Literal transcription of MIT's AUC_Judd.m loop (without its jitter)."""
    s, f = sal.ravel(), fix.ravel()
    sth = np.sort(s[f > 0])[::-1]
    n_fix, n_pix = sth.size, s.size
    tp, fp = [0.0], [0.0]
    for i, thresh in enumerate(sth, start=1):
        above = np.sum(s >= thresh)
        tp.append(i / n_fix)
        fp.append((above - i) / (n_pix - n_fix))
    tp.append(1.0)
    fp.append(1.0)
    return sum((fp[k + 1] - fp[k]) * (tp[k + 1] + tp[k]) / 2 for k in range(len(tp) - 1))


def test_auc_judd_equals_mit_loop_without_ties():
    rng = np.random.default_rng(5)
    for _ in range(3):
        sal = rng.random((9, 11))
        fix = rng.random((9, 11)) < 0.15
        assert auc_judd(sal, fix) == pytest.approx(_mit_auc_judd_loop(sal, fix), abs=1e-12)


def test_auc_judd_monotone_invariant():
    rng = np.random.default_rng(1)
    sal = rng.random((12, 15))
    fix = rng.random((12, 15)) < 0.1
    assert auc_judd(np.exp(3 * sal), fix) == pytest.approx(auc_judd(sal, fix))


# --- pysaliency fixture facts: two 40x40 images, fixations at (x, y), one triplicate --------------
def _pysaliency_like_fixations():
    xs = [[0, 1, 2, 1, 1, 1], [2, 2, 30, 7]]
    ys = [[10, 5, 3, 20, 20, 20], [10, 10, 4, 39]]  # (1,20): triplicate, (2,10): duplicate
    maps = []
    for x, y in zip(xs, ys):
        m = np.zeros((40, 40), dtype=np.int64)
        np.add.at(m, (np.array(y), np.array(x)), 1)
        maps.append(m)
    return maps


@pytest.mark.parametrize("value", [0.0, 1.0, -3.5])
def test_constant_map_gives_half_for_every_auc(value):
    fix0, fix1 = _pysaliency_like_fixations()
    assert fix0.max() == 3 and fix1.max() == 2  # repeated fixations are counts
    const = np.full((40, 40), value)
    for fix, other in ((fix0, fix1), (fix1, fix0)):
        assert auc_judd(const, fix) == pytest.approx(0.5)
        assert auc_borji(const, fix) == pytest.approx(0.5)
        assert auc_shuffled(const, fix, other) == pytest.approx(0.5)
        assert nss(const, fix) == 0.0


# --- AUC-Borji / shuffled -----------------------------------------------------------------------
def test_auc_borji_binary_map_expected_value():
    # sal = fix (10% of pixels): positives all 1 -> tp = 1 for t in (0, 1]; a random pixel is
    # fixated with prob q=.1 -> fp = f at t in (0,1], 1 at t=0 -> area 1 - f/2, E = 1 - q/2 = 0.95.
    fix = np.zeros((20, 20), dtype=bool)
    fix[:4, :10] = True
    score = auc_borji(fix.astype(float), fix, n_splits=200, seed=3)
    assert score == pytest.approx(0.95, abs=0.01)
    assert score == auc_borji(fix.astype(float), fix, n_splits=200, seed=3)  # seeded


def test_auc_shuffled_same_fixations_is_half_and_separated_is_one():
    rng = np.random.default_rng(0)
    sal = rng.random((10, 10))
    fix = np.zeros((10, 10), dtype=bool)
    fix[2, 3] = fix[7, 7] = fix[5, 1] = True
    # other_fix == fix: every split draws all 3 fixations -> tp == fp at every threshold -> 0.5
    assert auc_shuffled(sal, fix, fix) == pytest.approx(0.5)
    # fixations where sal = 1, other fixations where sal = 0 -> tp=1 before fp rises -> 1.0
    sal = np.zeros((10, 10))
    sal[fix] = 1.0
    other = np.zeros((10, 10), dtype=np.uint8)
    other[0, :5] = 1
    assert auc_shuffled(sal, fix, other) == pytest.approx(1.0)


# --- NSS, CC, SIM, KL, InfoGain ------------------------------------------------------------------
def test_nss_by_hand():
    # sal 0 0 0 1: mean .25, MATLAB std (ddof=1) = sqrt((3*.0625 + .5625)/3) = .5 -> NSS 1.5
    assert nss(np.array([[0, 0, 0, 1]]), np.array([[0, 0, 0, 1]])) == pytest.approx(1.5)


def test_nss_of_fixation_map_itself():
    # binary map with k of n pixels fixated: NSS = sqrt((1-p)(n-1)/(n p)), p = k/n
    fix = np.zeros((8, 10), dtype=bool)
    fix[1, 2] = fix[5, 5] = fix[7, 9] = True
    n, p = 80, 3 / 80
    assert nss(fix, fix) == pytest.approx(math.sqrt((1 - p) * (n - 1) / (n * p)))


def test_cc_by_hand_and_self():
    # [1,2,3] vs [1,3,2]: deviations (-1,0,1), (-1,1,0) -> cov 1, var 2 each -> 0.5
    assert cc(np.array([[1.0, 2, 3]]), np.array([[1.0, 3, 2]])) == pytest.approx(0.5)
    x = np.random.default_rng(2).random((9, 7))
    assert cc(x, x) == pytest.approx(1.0)
    assert cc(np.ones((9, 7)), x) == 0.0


def test_sim_by_hand_and_self():
    # s 0 1 2 3 -> minmax/sum = 0 1/6 1/3 1/2; g 1 1 0 0 -> .5 .5 0 0; sum of minima = 1/6
    assert sim(np.array([[0.0, 1, 2, 3]]), np.array([[1.0, 1, 0, 0]])) == pytest.approx(1 / 6)
    x = np.random.default_rng(3).random((6, 6))
    assert sim(x, x) == pytest.approx(1.0)


def test_kl_by_hand_and_self():
    # s 1 1 -> .5 .5; g 1 0 -> 1 0: KL = log(eps + 1/.5) = log 2
    assert kl_div(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]])) == pytest.approx(math.log(2))
    x = np.random.default_rng(4).random((6, 6)) + 0.1
    assert kl_div(x, x) == pytest.approx(0.0, abs=1e-12)
    assert kl_div(3 * x, x) == pytest.approx(0.0, abs=1e-12)  # scale invariant


def test_info_gain_by_hand():
    # s 0 1 2 3 -> minmax/sum 0 1/6 1/3 1/2; baseline constant -> uniform 1/4;
    # fixation at the last pixel: log2(.5) - log2(.25) = 1 bit
    fix = np.array([[0, 0, 0, 1]])
    assert info_gain(np.array([[0.0, 1, 2, 3]]), fix, np.ones((1, 4))) == pytest.approx(1.0)
    assert info_gain(np.array([[0.0, 1, 2, 3]]), fix, np.array([[0.0, 1, 2, 3]])) == 0.0


# --- input handling ---------------------------------------------------------------------------
def test_integer_inputs_converted_not_binarised():
    sal_u8 = np.array([[0, 100, 200, 255]], dtype=np.uint8)
    fix = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    assert nss(sal_u8, fix) == pytest.approx(nss(sal_u8.astype(float), fix.astype(bool)))
    assert cc(sal_u8, np.array([[0, 100, 200, 255]], dtype=np.uint8)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="binary or fixation-count"):
        nss(sal_u8, np.array([[0, 0.5, 1, 0]]))
    with pytest.raises(ValueError, match="binary or fixation-count"):
        auc_judd(sal_u8, np.array([[0, -1, 1, 0]]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: auc_judd(np.ones((3, 3)), np.ones((3, 4))), "one size"),
        (lambda: nss(np.ones((3, 3)), np.zeros((3, 3))), "fix has no fixations"),
        (lambda: auc_shuffled(np.ones((3, 3)), np.eye(3), np.zeros((3, 3))), "other_fix has no"),
        (lambda: cc(np.array([[1.0, np.nan]]), np.ones((1, 2))), "sal has 1 non-finite"),
        (lambda: sim(np.ones((1, 2)), np.array([[np.inf, 1.0]])), "gt has 1 non-finite"),
        (lambda: kl_div(np.ones((1, 2)), np.zeros((1, 2))), "gt has no fixations"),
        (lambda: kl_div(np.array([[-1.0, 1.0]]), np.ones((1, 2))), "sal must be >= 0"),
        (lambda: auc_judd(np.ones(4), np.ones(4)), "2-D"),
        (lambda: auc_judd(np.ones((2, 2)), np.ones((2, 2))), "every pixel is fixated"),
        (lambda: info_gain(np.ones((2, 2)), np.eye(2), np.ones((3, 2))), "one size"),
    ],
)
def test_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
