"""Fast inference of SACT stages: BatchNorm folding, gather -> GEMM -> scatter kernels, sparse units and
sparse halting / accumulation (``cfg.MODEL.SACT.EXECUTION`` sparse / auto)."""
