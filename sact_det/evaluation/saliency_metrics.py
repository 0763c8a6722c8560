"""Saliency metrics of the MIT saliency benchmark (cvzoya/saliency, ``code_forMetrics``), plain numpy.

Every function takes maps of ONE size (H, W); the caller resizes the saliency map to the fixation
map first, as the benchmark does (see :func:`sact_det.evaluation.saliency.resize_map`).

Inputs
------
``sal``        float saliency map (H, W); any finite values (``kl_div`` needs them >= 0).
``fix``        fixation map (H, W): bool, or non-negative whole numbers = fixations per pixel.
               A binary map (CAT2000 ``fixLocs``) gives the MIT numbers; a count map weights each
               pixel by its count (pysaliency: every fixation counts, a triplicate three times).
               Values such as 0.5 or -1 raise ``ValueError``: maps are never silently binarised.
``other_fix``  fixation map of other images (shuffled AUC), same rules as ``fix``.
``gt``         continuous fixation map (H, W), e.g. CAT2000 FIXATIONMAPS, >= 0, not all zero.
``baseline``   baseline saliency map (H, W) for ``info_gain``.
Integer / bool inputs are converted to float64. Shape mismatch, fewer than 2-D, non-finite
values, or a fixation map without fixations raise ``ValueError`` naming the argument.

Deviations from the MIT code (all other steps follow it)
-------------------------------------------------------
* AUC-Judd ties: MIT adds uniform noise in [0, 1e-7) to the map so that ties break at random
  (the score of a blocky map is then random, and a constant map gives 0.5 +- noise). Here the
  ROC curve is TIE-AWARE and deterministic: thresholds are the DISTINCT saliency values at
  fixated pixels, each point counts every pixel with a value >= threshold, so a block of tied
  values becomes one straight ROC segment (a negative tied with a positive counts half).
  Between thresholds the MIT curve is kept as is (straight segments between the points at the
  fixated values, then ``trapz``), so a map without ties scores exactly as in MIT's code. That
  curve exceeds the Mann-Whitney AUC by at most ``fp_last / (2 * n_fixations)``.
* A constant map (any value, also all-zero) is a valid "no information" prediction: every AUC is
  0.5, NSS and CC are 0, SIM / KL / InfoGain use the uniform distribution. MIT returns NaN
  for the AUCs, NSS, CC, SIM and InfoGain of a constant map, and keeps an all-zero map zero.
* Fixation-count maps weight fixated pixels by their count (MIT binarises with ``F > 0``);
  the number of random negatives in AUC-Borji / shuffled AUC stays the number of fixated pixels.
  Shuffled-AUC negatives are drawn from ``other_fix`` as a multiset (a pixel with count k can be
  drawn up to k times).
* Random numbers come from ``numpy.random.default_rng(seed)`` instead of MATLAB's ``randi`` /
  ``randperm``, so AUC-Borji and shuffled AUC agree with MIT's in distribution, not digit for digit.
* AUC-Judd raises ``ValueError`` when every pixel is fixated (MIT divides by zero).
* ``kl_div`` raises ``ValueError`` for negative maps (MIT does not check; its result is then
  meaningless).
"""
import numpy as np

__all__ = ["auc_judd", "auc_borji", "auc_shuffled", "nss", "cc", "sim", "kl_div", "info_gain"]

EPS = 2.2204e-16  # MATLAB eps, as in MIT's KLdiv.m / InfoGain.m


def _as_float_map(name: str, a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) map, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = np.asarray(arr, dtype=np.float64)  # no copy when already float64
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{name} has {arr.size - int(finite.sum())} non-finite values (NaN or inf)")
    return arr


def _as_fixations(name: str, a) -> np.ndarray:
    """Fixation counts (H, W) as float64; bool or non-negative whole numbers only."""
    kind = np.asarray(a).dtype.kind
    arr = _as_float_map(name, a)
    if kind != "b" and (arr.min() < 0 or (kind == "f" and np.any(arr != np.round(arr)))):
        odd = np.unique(arr[(arr < 0) | (arr != np.round(arr))])[:5]
        raise ValueError(
            f"{name} must be a binary or fixation-count map (whole numbers >= 0); found values "
            f"{odd.tolist()}. A continuous fixation map belongs in cc/sim/kl_div; binarise "
            f"explicitly (e.g. {name} > 0) if that is what you mean."
        )
    if not np.any(arr > 0):
        raise ValueError(f"{name} has no fixations (all zero)")
    return arr


def _check_same_shape(**maps: np.ndarray) -> None:
    shapes = {k: v.shape for k, v in maps.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"maps must have one size (resize the saliency map to the fixation map first): {shapes}"
        )


def _minmax(x: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant map becomes all zeros."""
    lo, hi = x.min(), x.max()
    return np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)


def _distribution(x: np.ndarray, minmax: bool) -> np.ndarray:
    """Map -> probability distribution (sums to 1); a constant map becomes uniform."""
    if x.max() == x.min():
        return np.full_like(x, 1.0 / x.size)
    y = _minmax(x) if minmax else x
    return y / y.sum()


def _trapz(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trapezoid area along the last axis (``trapz(fp, tp)`` of MATLAB)."""
    return np.sum((x[..., 1:] - x[..., :-1]) * (y[..., 1:] + y[..., :-1]) / 2.0, axis=-1)


def auc_judd(sal, fix) -> float:
    """AUC-Judd: thresholds at the saliency of fixated pixels, negatives = all non-fixated pixels.

    Tie-aware (see module docstring) instead of MIT's random jitter. Returns a float in [0, 1].
    """
    s = _as_float_map("sal", sal)
    f = _as_fixations("fix", fix)
    _check_same_shape(sal=s, fix=f)
    pos_mask = f > 0
    neg = s[~pos_mask]
    if neg.size == 0:
        raise ValueError("fix: every pixel is fixated, AUC-Judd needs non-fixated pixels")
    thresholds, inverse = np.unique(s[pos_mask], return_inverse=True)  # ascending
    weight = np.bincount(inverse.ravel(), weights=f[pos_mask], minlength=thresholds.size)
    # n_le[i] = #negatives with exactly i thresholds <= value; #neg >= thresholds[j] = sum_{i>j} n_le[i]
    n_le = np.bincount(np.searchsorted(thresholds, neg, side="right"), minlength=thresholds.size + 1)
    neg_ge = np.cumsum(n_le[::-1])[::-1][1:]
    weight, neg_ge = weight[::-1], neg_ge[::-1]  # descending thresholds, as MIT sweeps
    tp = np.cumsum(weight) / weight.sum()
    fp = neg_ge / neg.size
    tp = np.concatenate([[0.0], tp, [1.0]])
    fp = np.concatenate([[0.0], fp, [1.0]])
    return float(_trapz(fp, tp))


def _step_thresholds(max_value: float, step: float) -> np.ndarray:
    """MATLAB ``fliplr(0:step:max_value)``."""
    n = int(np.floor(max_value / step + 1e-10))
    return np.arange(n, -1, -1) * step


def _auc_random_negatives(s: np.ndarray, f: np.ndarray, neg_index_sampler, n_splits: int,
                          step: float) -> float:
    """Mean over splits of the fixed-step ROC area; ``neg_index_sampler()`` -> flat indices."""
    if n_splits < 1 or step <= 0:
        raise ValueError(f"need n_splits >= 1 and step > 0, got n_splits={n_splits}, step={step}")
    s = _minmax(s).ravel()
    pos_mask = f.ravel() > 0
    pos, w = s[pos_mask], f.ravel()[pos_mask]
    aucs = np.empty(n_splits)
    for k in range(n_splits):
        neg = s[neg_index_sampler()]
        th = _step_thresholds(max(pos.max(), neg.max()), step)
        tp = (w[None, :] * (pos[None, :] >= th[:, None])).sum(axis=1) / w.sum()
        fp = (neg[None, :] >= th[:, None]).mean(axis=1)
        aucs[k] = _trapz(np.concatenate([[0.0], fp, [1.0]]), np.concatenate([[0.0], tp, [1.0]]))
    return float(aucs.mean())


def auc_borji(sal, fix, n_splits: int = 100, step: float = 0.1, seed: int = 0) -> float:
    """AUC-Borji: map min-max normalised; per split as many negatives as fixated pixels, drawn
    uniformly (with replacement) from all pixels; thresholds ``0:step:max``; mean over splits."""
    s = _as_float_map("sal", sal)
    f = _as_fixations("fix", fix)
    _check_same_shape(sal=s, fix=f)
    rng = np.random.default_rng(seed)
    n_neg = int(np.count_nonzero(f))
    return _auc_random_negatives(s, f, lambda: rng.integers(0, s.size, n_neg), n_splits, step)


def auc_shuffled(sal, fix, other_fix, n_splits: int = 100, step: float = 0.1, seed: int = 0) -> float:
    """Shuffled AUC: like AUC-Borji, but negatives are the saliency values at fixations of OTHER
    images (``other_fix``, e.g. the union of 10 other images' fixations), drawn without
    replacement, ``min(#fixated pixels, #other fixations)`` per split."""
    s = _as_float_map("sal", sal)
    f = _as_fixations("fix", fix)
    o = _as_fixations("other_fix", other_fix)
    _check_same_shape(sal=s, fix=f, other_fix=o)
    flat = o.ravel()
    idx = np.flatnonzero(flat)
    pool = np.repeat(idx, flat[idx].astype(np.int64))
    n_neg = min(int(np.count_nonzero(f)), pool.size)
    rng = np.random.default_rng(seed)
    return _auc_random_negatives(
        s, f, lambda: pool[rng.permutation(pool.size)[:n_neg]], n_splits, step
    )


def nss(sal, fix) -> float:
    """NSS: map z-scored (MATLAB ``std``, i.e. ddof=1), mean at fixations (weighted by count)."""
    s = _as_float_map("sal", sal)
    f = _as_fixations("fix", fix)
    _check_same_shape(sal=s, fix=f)
    if s.max() == s.min() or s.size < 2:
        return 0.0
    at = f > 0
    z = (s[at] - s.mean()) / s.std(ddof=1)
    return float(np.sum(z * f[at]) / f[at].sum())


def _as_gt(gt) -> np.ndarray:
    g = _as_float_map("gt", gt)
    if np.any(g < 0):
        raise ValueError(f"gt must be >= 0 (a fixation density), min is {g.min()}")
    if not np.any(g > 0):
        raise ValueError("gt has no fixations (all zero)")
    return g


def cc(sal, gt) -> float:
    """CC: Pearson correlation of the two maps (0 when either map is constant)."""
    s = _as_float_map("sal", sal)
    g = _as_gt(gt)
    _check_same_shape(sal=s, gt=g)
    ds, dg = s - s.mean(), g - g.mean()
    denom = np.sqrt(np.sum(ds * ds) * np.sum(dg * dg))
    return 0.0 if denom == 0 else float(np.sum(ds * dg) / denom)


def sim(sal, gt) -> float:
    """SIM: both maps min-max normalised then sum-normalised; sum of the pixelwise minimum."""
    s = _as_float_map("sal", sal)
    g = _as_gt(gt)
    _check_same_shape(sal=s, gt=g)
    return float(np.minimum(_distribution(s, True), _distribution(g, True)).sum())


def kl_div(sal, gt) -> float:
    """KL(gt || sal) in nats: both sum-normalised; ``sum G log(eps + G / (S + eps))``."""
    s = _as_float_map("sal", sal)
    g = _as_gt(gt)
    _check_same_shape(sal=s, gt=g)
    if np.any(s < 0):
        raise ValueError(f"sal must be >= 0 for kl_div (a density), min is {s.min()}")
    p_s, p_g = _distribution(s, False), _distribution(g, False)
    return float(np.sum(p_g * np.log(EPS + p_g / (p_s + EPS))))


def info_gain(sal, fix, baseline) -> float:
    """InfoGain in bits per fixation over ``baseline``: both maps min-max then sum normalised,
    mean over fixations of ``log2(eps + S) - log2(eps + B)``."""
    s = _as_float_map("sal", sal)
    f = _as_fixations("fix", fix)
    b = _as_float_map("baseline", baseline)
    _check_same_shape(sal=s, fix=f, baseline=b)
    at = f > 0
    p_s, p_b = _distribution(s, True)[at], _distribution(b, True)[at]
    gain = np.log2(EPS + p_s) - np.log2(EPS + p_b)
    return float(np.sum(gain * f[at]) / f[at].sum())

