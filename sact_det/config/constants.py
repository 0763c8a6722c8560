"""Names and numbers that several sact_det modules share; defined once here (imports nothing)."""

STAGE_ORDER = ("res2", "res3", "res4", "res5")  # residual stages of a ResNet, input to output
EXECUTION_MODES = ("dense", "sparse", "auto")  # cfg.MODEL.SACT.EXECUTION: masked dense, gather/scatter, per image
# "auto": an image's unit runs sparsely when its active fraction is below a threshold. SPARSE_MAX_DENSITY (the
# config default) -1 means "by the map's width": the break-even of the in-place gather kernel vs. the dense
# folded unit grows with the channels (larger GEMMs amortise the gathers). Measured with the native kernels by
# `tools/benchmark_sparse.py --part crossover` (bottlenecks of R-50's res2 / res3 / res4 widths on their maps
# at 600x1000, fp32 channels-last, blob masks; docs/results/crossover_*.txt): about 0.87 on 1 thread and 0.72 on
# 2 for res2 (on 2 threads the dense convs gain more than the gathers) / 0.80-0.85 / 0.80-0.85 for res3 / res4
# with this version's kernels (the previous version's runs: 0.72-0.78 / 0.74-0.85 / 0.83-0.88); the table stays
# at or below them.
SPARSE_MAX_DENSITY = -1.0
SPARSE_MAX_DENSITY_BY_WIDTH = ((256, 0.8, 0.7), (None, 0.8, 0.8))  # (max channels or None, 1 thread, 2+ threads)


def sparse_max_density(value: float, channels: int, threads: int = 2) -> float:
    """The "auto" threshold for a map of ``channels`` run on ``threads`` CPU threads (torch.get_num_threads()):
    ``value`` if it is >= 0, else from the width table."""
    if value >= 0:
        return float(value)
    one, more = next((t1, t2) for c, t1, t2 in SPARSE_MAX_DENSITY_BY_WIDTH if c is None or channels <= c)
    return one if threads <= 1 else more

__all__ = ["STAGE_ORDER", "EXECUTION_MODES", "SPARSE_MAX_DENSITY", "SPARSE_MAX_DENSITY_BY_WIDTH", "sparse_max_density"]
