#!/usr/bin/env python
"""Benchmark sparse SACT inference against dense, side by side in one run.

(a) ``--part unit``: one ResNet-50 res4 bottleneck (1024->256->256->1024) at 1x1024x50x84, fp32,
    with spatially coherent "blob" masks (thresholded smoothed noise) at given active fractions:
    the gather kernel ("sparse"), the auto dispatch ("auto") and the backbone's masked dense path
    where(m, block(x), x) ("masked") against the dense unit with BN folded ("dense"), on an NCHW
    input; and on a channels-last input, the gather kernel with a copy, in place, and auto in place
    (how a unit runs inside a SACT stage at inference).
(b) ``--part extractor``: the SACT R-50 C4 feature extractor (stem..res4) at 600x1000 on demo
    images with the masks it produces (trained ``--weights``, or random halting convs whose shared
    bias is calibrated to a FLOPs fraction), EXECUTION dense (masked) / sparse / auto, against
    detectron2's dense ResNet-50 extractor with the same conv weights ("d2"). ``--replay-weights``:
    the full-width extractor's units run on the masks a trained (demo) SACT detector really
    produces on each image (its halting branches are evaluated but their masks ignored).
(c) ``--part crossover``: the in-place gather kernel against the dense folded unit for bottlenecks of R-50's
    res2 / res3 / res4 widths on their maps at ``--image-size``, at each of ``--densities``: where "auto"
    should switch to the dense unit (``SPARSE_MAX_DENSITY`` -1 uses a threshold per width).
``--breakdown`` (b): per adaptive stage and unit, the unit's time against the dense folded unit on the same
input, and the time of its halting branch and of its output accumulation (where the time goes).
``--memory``: peak resident memory added by two forwards (VmHWM - VmRSS before; persistent state
made by the first call, such as cached folded weights, counts), each variant in its own
subprocess with glibc's mmap threshold lowered so that freed blocks leave RSS.

Timing: every round times every variant once, in a fresh random order; a ratio is the median
over rounds of dense_time / variant_time from the same round. The machine load
(``os.getloadavg``) before and after is printed, since shared machines make timings noisy;
``--threads 1 --clock cpu`` times the CPU time of the calling thread, which other load barely changes.
"""
import argparse
import gc
import os
import random
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import benchmark_env  # noqa: E402  (before torch: allocator settings)
import sact_det  # noqa: E402,F401  (compat patches first)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling.backbone.resnet import BottleneckBlock  # noqa: E402

from sact_det.config.constants import SPARSE_MAX_DENSITY, sparse_max_density  # noqa: E402
from sact_det.modeling.core.flop_rules import dilate  # noqa: E402
from sact_det.modeling.execution import native, sparse  # noqa: E402
from sact_det.modeling.sact.calibration import calibrate_halting, flops_fraction, randomize_halting  # noqa: E402
from sact_det.modeling.execution.fold import fold_norms, folded_resnet_forward  # noqa: E402

INF = float("inf")
CLOCK = time.perf_counter  # --clock cpu: time.thread_time (CPU time of this thread; needs --threads 1)


# ----------------------------------------------------------------------------- helpers
def blob_mask(h: int, w: int, density: float, seed: int = 0, smooth: int = 9) -> torch.Tensor:
    """Spatially coherent (1,1,h,w) bool mask with round(density*h*w) active positions.

    White noise box-filtered twice (``smooth`` px) and thresholded at its (1 - density) quantile.
    """
    n = int(round(density * h * w))
    if n >= h * w:
        return torch.ones(1, 1, h, w, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, h, w, generator=g)
    k = torch.ones(1, 1, smooth, smooth) / smooth ** 2
    for _ in range(2):
        noise = F.conv2d(F.pad(noise, [smooth // 2] * 4, mode="replicate"), k)
    flat = torch.zeros(h * w, dtype=torch.bool)
    flat[noise.flatten().argsort(descending=True)[:n]] = True
    return flat.view(1, 1, h, w)


def randomize_norms(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every (Frozen)BN non-trivial statistics so folding is really exercised; returns module."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) * 0.5 + 0.5
            m.bias.data = torch.randn(c, generator=g) * 0.1
            m.running_mean.data = torch.randn(c, generator=g) * 0.1
            m.running_var.data = torch.rand(c, generator=g) * 0.5 + 0.75
    return module


def time_rounds(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                setup: Dict[str, Callable[[], object]] = None) -> Dict[str, List[float]]:
    """Seconds per call of each fn over ``rounds`` rounds, each round in a shuffled order.

    ``setup[k]``, if given, runs untimed right before each call of ``fns[k]``.
    """
    setup = setup or {}
    for _ in range(warmup):
        for k, f in fns.items():
            setup.get(k, lambda: None)()
            f()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    keys, rng = list(fns), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(keys)
        for k in keys:
            setup.get(k, lambda: None)()
            t0 = CLOCK()
            fns[k]()
            times[k].append(CLOCK() - t0)
    return times


def quartile_ratios(base: Sequence[float], other: Sequence[float]) -> Tuple[float, float]:
    """(q1, q3) over rounds of the per-round ratio base / other (lower and upper quartile, nearest rank)."""
    r = sorted(b / o for b, o in zip(base, other))
    return r[len(r) // 4], r[(3 * len(r)) // 4]


def median_ratio(base: Sequence[float], other: Sequence[float]) -> float:
    """Median over rounds of base / other (pairs from the same round)."""
    return statistics.median(b / o for b, o in zip(base, other))


def load_str() -> str:
    return "load average (1/5/15 min): " + " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1))


def peak_rss_bytes(fn: Callable[[], object]) -> int:
    """Peak RSS added while ``fn`` runs twice (the first call's lazy state, e.g. cached folded weights
    or oneDNN primitives, counts), relative to the RSS before; via /proc/self/clear_refs."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    fn()
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def memory_in_subprocess(argv: List[str], spec: str) -> float:
    """MiB reported by ``--memory-worker spec`` run in a fresh interpreter."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", SACT_KEEP_FREED_MEMORY="0")  # RSS: live memory only
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--memory-worker", spec]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("PEAK ")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"memory worker {spec} failed:\n{res.stderr[-2000:]}")
    return int(lines[-1].split()[1]) / 2 ** 20


# ----------------------------------------------------------------------------- (a) one unit
def _unit_setup(args, c: int = 1024, cb: int = 256, hw: Optional[Tuple[int, int]] = None):
    torch.manual_seed(0)
    block = randomize_norms(BottleneckBlock(c, c, bottleneck_channels=cb, norm="FrozenBN")).eval()
    x = torch.randn(1, c, *(hw or (args.height, args.width))).relu_()
    return block, sparse.fold_unit(block), x


def _unit_fns(block, folded, x, m, max_density: float):
    """Variants of part (a) and their untimed setups. x: (1,C,H,W) NCHW (detectron2's layout); max_density: the
    auto threshold (-1: by the unit's width)."""
    max_density = sparse_max_density(max_density, folded.channels)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    state = x_cl.clone()
    fns = {
        "dense": lambda: sparse.dense_folded_forward(folded, x),
        "sparse": lambda: sparse.sparse_unit_forward(folded, x, m, max_density=INF),
        "auto": lambda: sparse.sparse_unit_forward(folded, x, m, max_density=max_density),
        "masked": lambda: torch.where(m, block(x), x),
        "dense_cl": lambda: sparse.dense_folded_forward(folded, x_cl),
        "sparse_cl": lambda: sparse.sparse_unit_forward(folded, x_cl, m, max_density=INF),
        # inside a stage the state is no longer needed once the unit ran: it is overwritten (what
        # the SACT stage does at inference: channels-last state, in place, auto dispatch)
        "inplace_cl": lambda: sparse.sparse_unit_forward(folded, state, m, max_density=INF, inplace=True),
        "auto_cl": lambda: sparse.sparse_unit_forward(folded, state, m, max_density=max_density, inplace=True),
    }
    reset = lambda: state.copy_(x_cl)  # noqa: E731
    return fns, {"inplace_cl": reset, "auto_cl": reset}


def flop_fraction(mask: torch.Tensor, macs: Sequence[int]) -> float:
    """FLOPs sparse / dense of a unit whose convs cost ``macs`` multiply-adds per position: the first conv on the
    3x3-dilated mask (the counter's :func:`dilate`), the others on the mask; mask (..., H, W) bool."""
    n, nd = int(mask.sum()), int(dilate(mask).sum())
    return (nd * macs[0] + n * sum(macs[1:])) / (mask.numel() * sum(macs))


def unit_flop_fraction(mask: torch.Tensor, c: int = 1024, cb: int = 256) -> float:
    """FLOPs sparse / dense for a c -> cb -> cb -> c bottleneck (3x3 in the middle) on ``mask``."""
    return flop_fraction(mask, [c * cb, 9 * cb * cb, cb * c])


def bench_unit(args, argv: List[str]) -> None:
    block, folded, x = _unit_setup(args)
    h, w = args.height, args.width
    print(f"(a) res4 bottleneck 1024->256->256->1024, input 1x1024x{h}x{w}, fp32, {torch.get_num_threads()} threads, "
          f"{benchmark_env.describe()}, {args.clock} clock, blob masks, {args.rounds} rounds (median), "
          f"auto SPARSE_MAX_DENSITY={args.max_density} (threshold {sparse_max_density(args.max_density, 1024)})")
    print(f"    before: {load_str()}")
    rows = []
    with torch.no_grad():
        for d in args.densities:
            m = blob_mask(h, w, d, seed=1)
            fns, setup = _unit_fns(block, folded, x, m, args.max_density)
            rows.append((d, unit_flop_fraction(m), time_rounds(fns, args.rounds, setup=setup)))
    print(f"    after:  {load_str()}")
    tables = [("channels-last input (how a SACT stage runs at inference); dense folded on the same channels-last input",
               "dense_cl", [("sparse", "sparse_cl"), ("sparse in place", "inplace_cl"), ("auto in place", "auto_cl")]),
              ("NCHW input (detectron2's layout); dense folded on the same NCHW input",
               "dense", [("sparse", "sparse"), ("auto", "auto"), ("masked dense", "masked")])]
    for title, base, cols in tables:
        print(title + "; speedup = median over rounds of dense folded time / time")
        print("| active | FLOPs sparse/dense | dense folded ms | " + " | ".join(f"{c} ms (speedup)" for c, _ in cols) + " |")
        print("|---|---|---|" + "---|" * len(cols))
        for d, ff, t in rows:
            cells = [f"{statistics.median(t[k]) * 1e3:.1f} ({median_ratio(t[base], t[k]):.2f}x)" for _, k in cols]
            print(f"| {d * 100:.0f} % | {ff:.3f} | {statistics.median(t[base]) * 1e3:.1f} | " + " | ".join(cells) + " |")
    if args.memory:
        print("peak memory added by two unit forwards incl. lazy state (MiB, own subprocess each):")
        kinds = ("dense", "sparse", "masked", "dense_cl", "sparse_cl", "inplace_cl", "auto_cl")
        print("| active | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for d in args.densities:
            mem = [memory_in_subprocess(argv, f"unit:{k}:{d}") for k in kinds]
            print(f"| {d * 100:.0f} % | " + " | ".join(f"{v:.1f}" for v in mem) + " |")


def bench_crossover(args) -> None:
    """Where the in-place gather kernel stops beating the dense folded unit: bottlenecks of R-50's res2 / res3 /
    res4 widths on their maps at --image-size, channels-last, blob masks of growing density (the auto threshold)."""
    H, W = args.image_size
    print(f"(c) crossover: in-place sparse unit vs dense folded unit, channels-last fp32, {torch.get_num_threads()} "
          f"threads, {args.clock} clock, {args.rounds} rounds (median; q1-q3 of the per-round ratios)")
    print(f"    before: {load_str()}")
    print("| stage (C, C_b, map) | active | dense folded ms | sparse in place speedup (q1-q3) | auto threshold |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for name, c, cb, s in (("res2", 256, 64, 4), ("res3", 512, 128, 8), ("res4", 1024, 256, 16)):
            hw = (-(-H // s), -(-W // s))
            _, folded, x = _unit_setup(args, c, cb, hw)
            x = x.contiguous(memory_format=torch.channels_last)
            state = x.clone()
            for d in args.densities:
                m = blob_mask(*hw, d, seed=1)
                fns = {"dense": lambda: sparse.dense_folded_forward(folded, x),
                       "sparse": lambda: sparse.sparse_unit_forward(folded, state, m, max_density=INF, inplace=True)}
                t = time_rounds(fns, args.rounds, setup={"sparse": lambda: state.copy_(x)})
                q1, q3 = quartile_ratios(t["dense"], t["sparse"])
                print(f"| {name} ({c}, {cb}, {hw[0]}x{hw[1]}) | {d * 100:.0f} % | {statistics.median(t['dense']) * 1e3:.1f} "
                      f"| {median_ratio(t['dense'], t['sparse']):.2f}x ({q1:.2f}-{q3:.2f}) "
                      f"| {sparse_max_density(args.max_density, c)} |")
    print(f"    after:  {load_str()}")


# ----------------------------------------------------------------------------- (b) extractor
def _extractors(args):
    """(cfg, SACT backbone, detectron2 dense ResNet backbone with the same conv weights), eval mode."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone, build_model
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from sact_det.config import get_sact_cfg

    cfg = get_sact_cfg()
    cfg.merge_from_file(args.config)
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", args.weights
    if getattr(args, "halt_norm", None) is not None:
        cfg.MODEL.SACT.HALT_NORM = args.halt_norm
    torch.manual_seed(0)
    if args.weights:
        model = build_model(cfg)
        DetectionCheckpointer(model).load(args.weights)
        sact_bb = model.backbone
    else:
        sact_bb = build_backbone(cfg)
    dense_bb = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    dense_bb.load_state_dict({k: v for k, v in sact_bb.state_dict().items() if ".halting." not in k}, strict=True)
    return cfg, sact_bb.eval(), dense_bb.eval()


def _demo_images(cfg, n: int, hw, channels_last: bool = False, normalize: bool = True) -> List[torch.Tensor]:
    """The first ``n`` images of sact_demo_val, resized to ``hw``, normalized (else pixel values): (1,3,H,W) each."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    from sact_det.data import demo

    if "sact_demo_val" not in DatasetCatalog:  # normally registered by importing sact_det
        demo.register_demo_datasets()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    out = []
    for r in DatasetCatalog.get("sact_demo_val")[:n]:
        img = torch.as_tensor(read_image(r["file_name"], format=cfg.INPUT.FORMAT).copy()).permute(2, 0, 1).float()
        img = F.interpolate(img[None], size=tuple(hw), mode="bilinear", align_corners=False)
        img = (img - mean) / std if normalize else img
        out.append(img.contiguous(memory_format=torch.channels_last) if channels_last else img)
    return out


def replayed_masks(args, n: int, hw) -> List[Dict[str, List[torch.Tensor]]]:
    """Per image of the first ``n`` demo images at ``hw``, {stage: masks of units 1..L-1} that the trained
    ``--replay-weights`` model produces on it (the images normalized as its own config says)."""
    from argparse import Namespace

    cfg, trained, _ = _extractors(Namespace(config=args.replay_config, weights=args.replay_weights))
    trained.set_execution("dense")
    out = []
    with torch.no_grad():
        for img in _demo_images(cfg, n, hw):
            trained(img)
            out.append({k: [m.clone() for m in p.masks] for k, p in trained.last_ponder.items()})
    return out


def run_images(sact_bb, images, replay: Optional[List[Dict[str, List[torch.Tensor]]]] = None) -> None:
    """Forward every image, on the masks ``replay[i]`` if given (sparse / auto execution)."""
    for i, img in enumerate(images):
        if replay is None:
            sact_bb(img)
        else:
            with sact_bb.replay_masks(replay[i]):
                sact_bb(img)


def replayed_fraction(sact_bb, images, replay: List[Dict[str, List[torch.Tensor]]]) -> float:
    """Mean over images of the extractor's FLOPs fraction when its units run on the replayed masks."""
    fr = []
    for img, masks in zip(images, replay):
        with sact_bb.replay_masks(masks):
            fr.append(flops_fraction(sact_bb, [img]))
    return statistics.mean(fr)


BASELINES = ("d2_folded", "folded")  # the dense baselines with BN folded; the headline uses the faster


def _extractor_fns(sact_bb, dense_bb, images, max_density: float,
                   replay: Optional[List[Dict[str, List[torch.Tensor]]]] = None) -> Dict[str, Callable[[], object]]:
    nets = {"d2": dense_bb, "d2_folded": fold_norms(dense_bb), "folded": folded_resnet_forward(dense_bb)}

    def run(mode: str) -> Callable[[], None]:
        def f() -> None:
            if mode not in nets:
                sact_bb.set_execution(mode, max_density)
            net = nets.get(mode)
            if net is None:  # masked dense: its own halting masks (replay acts on the sparse path only)
                run_images(sact_bb, images, None if mode == "dense" else replay)
            else:
                for img in images:
                    net(img)
        return f

    fns = {m: run(m) for m in ("d2", *BASELINES, "dense", "sparse", "auto")}
    if native.available():  # the same auto run on torch operators only (what the native kernels add, same rounds)
        fns["auto_torch"] = _torch_only(run("auto"))
    return fns


def _torch_only(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` with the native row kernels switched off (``SACT_NATIVE=0``, read on every kernel call)."""
    def f() -> None:
        old = os.environ.get(native.ENV_ENABLE)
        os.environ[native.ENV_ENABLE] = "0"
        try:
            fn()
        finally:
            if old is None:
                del os.environ[native.ENV_ENABLE]
            else:
                os.environ[native.ENV_ENABLE] = old
    return f


def unit_breakdown(sact_bb, images, max_density: float, rounds: int,
                   replay: Optional[List[Dict[str, List[torch.Tensor]]]] = None) -> List[dict]:
    """Where the SACT extractor's time goes (EXECUTION auto). Rows per adaptive stage and unit l >= 1: its mean
    active fraction ("density"), its FLOPs / the dense unit's (first conv on the dilated mask, "flops"), the time
    of the unit as it ran ("sact"), of the dense folded unit on the same input ("dense", timed right before it
    after one untimed call), of its halting branch and of its output accumulation;
    row (stage, 0): unit 0 ("first", dense in both), its halting branch, and the whole stage ("stage_time", without
    the dense references). Seconds per image, mean over ``rounds`` (after one warm-up round). ``replay``: the units
    run on these masks (:func:`run_images`)."""
    from sact_det.modeling.execution import sparse_halting
    from sact_det.modeling.execution.fold import dense_folded_forward
    from sact_det.modeling.sact import backbone as sact_backbone

    acc: Dict[tuple, Dict[str, float]] = {}
    where = {"stage": "", "unit": 0, "in_stage": False, "start": 0.0, "ref": 0.0}
    saved = (sparse.sparse_unit_forward, sparse_halting.sparse_halting, sparse_halting.masked_accumulate_,
             sact_backbone.dense_folded_forward)

    def add(what: str, value: float) -> None:
        row = acc.setdefault((where["stage"], where["unit"]), {})
        row[what] = row.get(what, 0.0) + value

    def timed(what: str, fn: Callable) -> Callable:
        def run(*a, **k):
            t0 = CLOCK()
            out = fn(*a, **k)
            add(what, CLOCK() - t0)
            return out
        return run

    def unit(folded, x, active, **k):
        where["unit"] += 1
        t0 = CLOCK()
        dense_folded_forward(folded, x)  # untimed: a first call after another unit pays fresh allocations
        t1 = CLOCK()
        dense_folded_forward(folded, x)
        add("dense", CLOCK() - t1)
        where["ref"] += CLOCK() - t0
        density = sum(k["density"]) / len(k["density"])
        add("density", density)
        macs = [c.mat.numel() for c in folded.convs]
        add("flops", density if active.shape[2:] == (1, 1) else flop_fraction(active, macs))
        return timed("sact", saved[0])(folded, x, active, **k)

    def first_unit(folded, x):  # unit 0 inside a stage; the stem (outside every stage) is not recorded
        return timed("first", saved[3])(folded, x) if where["in_stage"] else saved[3](folded, x)

    def enter(stage_name: str) -> Callable:
        def hook(_module, _inputs) -> None:
            where.update(stage=stage_name, unit=0, in_stage=True, ref=0.0, start=CLOCK())
        return hook

    def leave(_module, _inputs, _output) -> None:
        stage_time = CLOCK() - where["start"] - where["ref"]
        where.update(unit=0, in_stage=False)
        add("stage_time", stage_time)

    hooks = [getattr(sact_bb, n).register_forward_pre_hook(enter(n)) for n in sact_bb.adaptive_stages]
    hooks += [getattr(sact_bb, n).register_forward_hook(leave) for n in sact_bb.adaptive_stages]
    sparse.sparse_unit_forward = unit
    sparse_halting.sparse_halting = timed("halting", saved[1])
    sparse_halting.masked_accumulate_ = timed("accumulation", saved[2])
    sact_backbone.dense_folded_forward = first_unit
    try:
        sact_bb.set_execution("auto", max_density)
        with torch.no_grad():
            for r in range(rounds + 1):
                if r == 1:
                    acc.clear()  # the first round warms up
                run_images(sact_bb, images, replay)
    finally:
        (sparse.sparse_unit_forward, sparse_halting.sparse_halting, sparse_halting.masked_accumulate_,
         sact_backbone.dense_folded_forward) = saved
        for h in hooks:
            h.remove()
    calls = rounds * len(images)
    return [{"stage": s, "unit": u, **{k: v / calls for k, v in row.items()}} for (s, u), row in sorted(acc.items())]


def print_breakdown(rows: List[dict]) -> float:
    """Prints the table of :func:`unit_breakdown`; returns the ms per image of the halting branches, the
    accumulation and the rest of the adaptive stages' work (what SACT spends besides its units)."""
    print("per unit (EXECUTION auto; ms per image, mean over rounds; unit 0 of a stage runs densely on both sides):")
    print("| stage | unit | active fraction | FLOPs SACT / dense | SACT unit ms | dense folded unit ms | SACT / dense "
          "| halting ms | accumulation ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    keys = ("sact", "dense", "halting", "accumulation", "first", "stage_time")
    tot = {k: 0.0 for k in keys}
    for r in rows:
        ms = {k: r.get(k, 0.0) * 1e3 for k in keys}
        for k in keys:
            tot[k] += ms[k]
        if "density" in r:
            ratio = f"{ms['sact'] / ms['dense']:.2f}" if ms["dense"] else "-"
            print(f"| {r['stage']} | {r['unit']} | {r['density']:.2f} | {r['flops']:.2f} | {ms['sact']:.1f} "
                  f"| {ms['dense']:.1f} | {ratio} | {ms['halting']:.1f} | {ms['accumulation']:.1f} |")
        else:
            print(f"| {r['stage']} | 0 | 1 (dense) | 1 | {ms['first']:.1f} | {ms['first']:.1f} | 1 "
                  f"| {ms['halting']:.1f} | - |")
    rest = tot["stage_time"] - tot["first"] - tot["sact"] - tot["halting"] - tot["accumulation"]
    # what the units that ran would save if they cost in proportion to their FLOPs (no gathers, GEMMs as fast as
    # the dense convs) or to their active positions (no dilated first conv either); units skipped entirely save
    # all their time and are not rows
    units = [r for r in rows if "density" in r]
    by_flops = sum((1.0 - r["flops"]) * r.get("dense", 0.0) * 1e3 for r in units)
    proportional = sum((1.0 - r["density"]) * r.get("dense", 0.0) * 1e3 for r in units)
    print(f"| all units l >= 1 | | | | {tot['sact']:.0f} | {tot['dense']:.0f} | "
          f"{tot['sact'] / max(tot['dense'], 1e-9):.2f} | {tot['halting']:.0f} | {tot['accumulation']:.0f} |")
    print(f"adaptive stages: {tot['stage_time']:.0f} ms per image; units l >= 1 save {tot['dense'] - tot['sact']:.0f} ms "
          f"against their dense folded versions; halting {tot['halting']:.0f} ms + accumulation "
          f"{tot['accumulation']:.0f} ms + the rest of the stages' work {rest:.0f} ms (halting arithmetic, output "
          f"initialisation, masks, dispatch) are spent in their place")
    if proportional > 0:
        saved = tot["dense"] - tot["sact"]
        print(f"the units that ran save {saved:.0f} ms of the {by_flops:.0f} ms that units costing in proportion "
              f"to their FLOPs would save ({saved / max(by_flops, 1e-9):.2f}; lost to the gathers and GEMMs slower "
              f"than the dense convs), and of the {proportional:.0f} ms in proportion to their active positions "
              f"({saved / proportional:.2f}; the 3x3-dilated first conv costs the difference)")
    return tot["halting"] + tot["accumulation"] + rest


def bench_extractor(args, argv: List[str]) -> None:
    from sact_det.modeling.sact.flops import backbone_flops

    hw = tuple(args.image_size)
    cfg, sact_bb, dense_bb = _extractors(args)
    images = _demo_images(cfg, args.images, hw, args.channels_last)
    r = cfg.MODEL.RESNETS
    dense_flops = backbone_flops(dense_bb, hw, ponder={})  # detectron2's dense extractor of the same widths
    fmt = "channels-last" if args.channels_last else "NCHW"
    print(f"(b) SACT R-{r.DEPTH} C4 extractor vs detectron2 dense R-{r.DEPTH} (stem..res4), {len(images)} demo "
          f"images at {hw[0]}x{hw[1]} ({fmt}), batch 1, fp32, {torch.get_num_threads()} threads, "
          f"{benchmark_env.describe()}, {args.clock} clock, {args.rounds_extractor} rounds (median), "
          f"auto SPARSE_MAX_DENSITY={args.max_density}; dense: {dense_flops / 1e9:.1f} GFLOPs/image")
    untrained = (f"none (random init); halting: random 3x3 convs + one shared bias calibrated, halting norm "
                 f"{cfg.MODEL.SACT.HALT_NORM or 'none'}")
    replay = replayed_masks(args, len(images), hw) if args.replay_weights else None
    if replay is not None:
        untrained = (f"none (random init); units run on the masks that {args.replay_weights} "
                     f"({args.replay_config}) produces on each image")
    print(f"    weights: {args.weights or untrained}")
    results = []
    for target in (args.target_flops if not (args.weights or replay) else [None]):
        bias = None
        if target is not None:
            sact_bb.set_execution("auto", SPARSE_MAX_DENSITY)
            randomize_halting(sact_bb, images=images[:2])
            bias = calibrate_halting(sact_bb, images[:2], target)
        diff = float("nan")  # replayed masks: the halting weights do not match them, outputs not comparable
        with torch.no_grad():
            if replay is None:
                ff, diff = flops_fraction(sact_bb, images), 0.0
                for img in images:
                    sact_bb.set_execution("dense")
                    ref = sact_bb(img)["res4"]
                    sact_bb.set_execution("sparse")
                    diff = max(diff, float((sact_bb(img)["res4"] - ref).abs().max() / ref.abs().max()))
            else:
                sact_bb.set_execution("auto", args.max_density)  # replay_masks act on the sparse path only
                ff = replayed_fraction(sact_bb, images, replay)
            before = load_str()
            fns = _extractor_fns(sact_bb, dense_bb, images, args.max_density, replay)
            t = time_rounds(fns, args.rounds_extractor, 1)
        print(f"    halting bias {bias}: before {before}; after {load_str()}")
        overhead = None
        if args.breakdown:
            overhead = print_breakdown(unit_breakdown(sact_bb, images, args.max_density, args.rounds_extractor, replay))
        mem = {}
        if args.memory and replay is None:
            extra = [] if bias is None else ["--halting-bias", str(bias)]
            mem = {k: memory_in_subprocess(argv + extra, f"extractor:{k}")
                   for k in ("d2", "d2_folded", "dense", "sparse", "auto")}
        results.append((target, bias, ff, diff, t, mem, overhead))
    print("headline: time saved / FLOPs saved against the fastest dense baseline of the same network (same input "
          "layout and threads, BN folded): the faster (median) of 'd2 folded' (detectron2's ResNet with BN folded "
          "into its convs) and 'folded' (every block folded and run by sact_det's dense_folded_forward, oneDNN convs "
          "on a channels-last state, the dense execution SACT's fully active units use); second: against d2 as it "
          "runs (FrozenBN after each conv). Time ratios: median over rounds of SACT time / baseline time from the "
          "same round (in brackets: its quartiles over rounds, the spread of a single round); ms: median per image")
    print("'torch only': SACT auto with the native row kernels off (SACT_NATIVE=0), timed in the same rounds "
          "('-': the kernels are not built here)")
    print("| halting | FLOPs SACT/dense | fastest dense ms | SACT auto ms | SACT sparse ms "
          "| time saved / FLOPs saved vs fastest dense (auto) | same, sparse | same, auto torch only "
          "| SACT auto torch only ms | d2 folded ms | folded ms | d2 ms "
          "| SACT masked ms | time saved / FLOPs saved vs d2 (auto) | max rel diff sparse vs masked |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for target, bias, ff, diff, t, _, overhead in results:
        n = len(images)
        med = {k: statistics.median(v) * 1e3 / n for k, v in t.items()}
        base = min(BASELINES, key=lambda k: med[k])
        saved = {(b, k): (1 - 1 / median_ratio(t[b], t[k])) / (1 - ff) if ff < 1 else float("nan")
                 for b in ("d2", base) for k in ("auto", "sparse", "auto_torch") if k in t}
        torch_only = (f"{saved[base, 'auto_torch']:.2f} | {med['auto_torch']:.0f}" if "auto_torch" in t else "- | -")
        # per-round time saved / FLOPs saved from the quartiles of SACT / baseline: (q3 -> lower, q1 -> upper)
        upper, lower = ((1 - q) / (1 - ff) if ff < 1 else float("nan") for q in quartile_ratios(t["auto"], t[base]))
        label = ("replayed" if replay else "trained") if target is None else f"bias {bias:+.2f}"
        print(f"| {label} | {ff:.3f} | {med[base]:.0f} ({base}) | {med['auto']:.0f} | {med['sparse']:.0f} "
              f"| {saved[base, 'auto']:.2f} ({lower:.2f}-{upper:.2f}) | {saved[base, 'sparse']:.2f} | {torch_only} "
              f"| {med['d2_folded']:.0f} | {med['folded']:.0f} | {med['d2']:.0f} | {med['dense']:.0f} "
              f"| {saved['d2', 'auto']:.2f} | {diff:.1e} |")
        if overhead is not None:
            free = (med[base] - med["auto"] + overhead) / (med[base] * (1 - ff)) if ff < 1 else float("nan")
            notes.append(f"{label}: without the halting, accumulation and rest ({overhead:.0f} ms per image in the "
                         f"breakdown's rounds), time saved / FLOPs saved vs fastest dense (auto) would be about {free:.2f}")
    for note in notes:
        print(note)
    if args.memory and replay is None:
        print("peak memory added by two forwards of one image incl. lazy state (MiB, own subprocess each):")
        print("| halting | d2 | d2 folded | SACT masked | SACT sparse | SACT auto |")
        print("|---|---|---|---|---|---|")
        for target, bias, ff, _, _, mem, _ in results:
            label = "trained" if target is None else f"bias {bias:+.2f}"
            print(f"| {label} | {mem['d2']:.0f} | {mem['d2_folded']:.0f} | {mem['dense']:.0f} | {mem['sparse']:.0f} "
                  f"| {mem['auto']:.0f} |")


# ----------------------------------------------------------------------------- main
def memory_worker(args) -> None:
    """Child process of ``--memory``: print ``PEAK <bytes>`` of one forward of the variant ``spec``."""
    part, kind, *rest = args.memory_worker.split(":")
    with torch.no_grad():
        if part == "unit":
            block, folded, x = _unit_setup(args)
            m = blob_mask(args.height, args.width, float(rest[0]), seed=1)
            fn = _unit_fns(block, folded, x, m, args.max_density)[0][kind]
        else:
            cfg, sact_bb, dense_bb = _extractors(args)
            images = _demo_images(cfg, 2, args.image_size, args.channels_last)
            if args.halting_bias is not None:  # the parent's halting (same images for the norm statistics)
                randomize_halting(sact_bb, bias=args.halting_bias, images=images)
            images = images[:1]
            fn = _extractor_fns(sact_bb, dense_bb, images, args.max_density)[kind]
        print("PEAK", peak_rss_bytes(fn))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["unit", "extractor", "crossover", "all"], default="all",
                   help="all: unit and extractor")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: CPU time of the calling thread (with --threads 1), robust to other load")
    p.add_argument("--memory", action="store_true", help="also measure peak memory (subprocesses)")
    p.add_argument("--max-density", type=float, default=SPARSE_MAX_DENSITY, help="auto threshold")
    p.add_argument("--rounds", type=int, default=15, help="(a) timing rounds")
    p.add_argument("--densities", type=float, nargs="+", default=[0.10, 0.25, 0.50, 0.75, 1.00])
    p.add_argument("--height", type=int, default=50)
    p.add_argument("--width", type=int, default=84)
    p.add_argument("--config", default="configs/COCO-Detection/sact_R_50_C4_tau0.005_1x.yaml")
    p.add_argument("--halt-norm", default=None, choices=["BN", "FrozenBN", "GN", ""],
                   help="(b) MODEL.SACT.HALT_NORM instead of the config's (untrained extractor; BN / FrozenBN statistics "
                        "are set from the calibration images)")
    p.add_argument("--weights", default="", help="(b) trained SACT detector checkpoint; none: calibrated halting")
    p.add_argument("--replay-weights", default="", help="(b) run the units of the (untrained, --config) extractor "
                   "on the masks this trained SACT detector produces on each image")
    p.add_argument("--replay-config", default="configs/Demo/sact_R_50_C4.yaml", help="config of --replay-weights")
    p.add_argument("--image-size", type=int, nargs=2, default=[600, 1000], metavar=("H", "W"))
    p.add_argument("--images", type=int, default=4, help="(b) number of demo images (sact_demo_val)")
    p.add_argument("--rounds-extractor", type=int, default=5)
    p.add_argument("--channels-last", action="store_true", help="(b) channels-last input images (both sides)")
    p.add_argument("--breakdown", action="store_true", help="(b) also time each unit, its halting branch and "
                   "its accumulation against the dense folded unit (EXECUTION auto, own masks)")
    p.add_argument("--target-flops", type=float, nargs="+", default=[0.5, 0.7, 0.85],
                   help="(b) untrained model: FLOPs fractions to calibrate the halting bias to")
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--halting-bias", type=float, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if args.threads != 1:
            p.error("--clock cpu measures one thread: use it with --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    if args.memory_worker:
        return memory_worker(args)
    if args.part in ("unit", "all"):
        bench_unit(args, argv)
    if args.part in ("extractor", "all"):
        bench_extractor(args, argv)
    if args.part == "crossover":
        bench_crossover(args)


if __name__ == "__main__":
    main()
