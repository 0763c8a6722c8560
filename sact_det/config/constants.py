"""Names and numbers that several sact_det modules share; defined once here (imports nothing)."""

STAGE_ORDER = ("res2", "res3", "res4", "res5")  # residual stages of a ResNet, input to output
EXECUTION_MODES = ("dense", "sparse", "auto")  # cfg.MODEL.SACT.EXECUTION: masked dense, gather/scatter, per image
# "auto": an image's unit runs sparsely when its active fraction is below a threshold. SPARSE_MAX_DENSITY (the
# config default) -1 means "by the map's width": the break-even of the in-place gather kernel vs. the dense
# folded unit grows with the channels (larger GEMMs amortise the gathers). Measured with the native kernels by
# `tools/benchmark_sparse.py --part crossover` (bottlenecks of R-50's res2 / res3 / res4 widths on their maps
# at 600x1000, fp32 channels-last, blob masks; docs/results/crossover_*.txt). Break-even (res2 / res3 / res4) in
# this version's runs (benchmarks keeping freed memory): about 0.68 / 0.79 / 0.84 on one thread and 0.73 / 0.72 /
# 0.84 on two; the previous session's: 0.72-0.74 / 0.74-0.80 / 0.85 (four runs, one thread) and 0.73 / 0.73 /
# 0.80-0.82 (two). The break-even moves with the machine's state, so the table stays at or below every run.
SPARSE_MAX_DENSITY = -1.0
SPARSE_MAX_DENSITY_BY_WIDTH = ((256, 0.65), (512, 0.7), (None, 0.8))  # (max channels or None, threshold)


def sparse_max_density(value: float, channels: int) -> float:
    """The "auto" threshold for a map of ``channels``: ``value`` if it is >= 0, else from the width table."""
    if value >= 0:
        return float(value)
    return next(t for c, t in SPARSE_MAX_DENSITY_BY_WIDTH if c is None or channels <= c)


__all__ = ["STAGE_ORDER", "EXECUTION_MODES", "SPARSE_MAX_DENSITY", "SPARSE_MAX_DENSITY_BY_WIDTH", "sparse_max_density"]
