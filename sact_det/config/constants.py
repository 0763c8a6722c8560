"""Names and numbers that several sact_det modules share; defined once here (imports nothing)."""

STAGE_ORDER = ("res2", "res3", "res4", "res5")  # residual stages of a ResNet, input to output
EXECUTION_MODES = ("dense", "sparse", "auto")  # cfg.MODEL.SACT.EXECUTION: masked dense, gather/scatter, per image
# "auto": an image's unit runs sparsely when its active fraction is below this: the break-even of the in-place
# gather kernel vs. the dense folded unit measured by tools/benchmark_sparse.py (res4 bottleneck, 1x1024x50x84,
# fp32, channels-last, 2 threads, blob masks)
SPARSE_MAX_DENSITY = 0.75

__all__ = ["STAGE_ORDER", "EXECUTION_MODES", "SPARSE_MAX_DENSITY"]
