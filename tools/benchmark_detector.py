#!/usr/bin/env python
"""End-to-end latency of a whole SACT Faster R-CNN C4 detector (extractor, RPN, box head) against dense.

Both detectors are built from ``--config`` (full widths, random weights; the dense one with MODEL.SACT.MODE
none and the same conv weights) and run on demo images resized to ``--image-size`` (batch 1, fp32,
inference); the box head of every variant runs on the same ``--proposals`` random boxes per image (the
RPN runs, its output is replaced: random weights give meaningless proposal counts). The SACT detector runs EXECUTION auto on the masks that a trained SACT detector
(``--replay-weights``, the demo detector of ``make demo``) produces on each image, when its depth matches;
otherwise (e.g. R-101 with the R-50 demo detector) its halting is calibrated to the FLOPs fraction those
masks give. Dense baselines: detectron2's detector as it runs, the same with BN folded into every conv
("folded"), folded in channels-last memory format, and folded with its backbone run block by block by
sact_det's dense_folded_forward (oneDNN convs on a channels-last state, "folded_onednn", the dense execution
of SACT's fully active units); the headline ratio is against the fastest of the folded ones, for the SACT
detector with its RPN and box head folded too (its backbone folds itself); SACT as it runs is compared with
d2 as it runs. Every round times every variant once, in a fresh random order; per-image latency is the
median over rounds, a ratio the median over rounds of the per-round ratio.

Also printed per variant, from one profiled image: operator calls and host-synchronising calls
(``aten::_local_scalar_dense`` from ``.item()`` / ``bool()`` / ``float()`` / ``.tolist()``, and
``aten::nonzero``) — on a GPU each of those waits for the device.

    python tools/benchmark_detector.py --replay-weights output/demo/sact_R_50_C4/model_final.pth \\
        --threads 1 --clock cpu
"""
import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import benchmark_env  # noqa: E402  (before torch: allocator settings)
import benchmark_sparse as bs  # noqa: E402  (then sact_det: compat patches)
import torch  # noqa: E402

from sact_det.modeling.execution.fold import fold_norms, folded_resnet_forward  # noqa: E402
from sact_det.modeling.sact.calibration import calibrate_halting, flops_fraction, randomize_halting  # noqa: E402

BASELINES = ("folded", "folded_cl", "folded_onednn")  # dense, BN folded: the headline uses the fastest

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")
CONFIGS = {50: "configs/COCO-Detection/sact_R_50_C4_tau0.005_1x.yaml",
           101: "configs/COCO-Detection/sact_R_101_C4_tau0.005_1x.yaml"}


def build_detectors(config: str, opts: List[str]):
    """(cfg, SACT detector, dense detector with the same conv weights), eval mode, CPU, random weights."""
    from detectron2.modeling import build_model

    from sact_det.config import get_sact_cfg

    cfg = get_sact_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.SACT.EXECUTION", "auto", *opts])
    torch.manual_seed(0)
    sact = build_model(cfg).eval()
    dense_cfg = cfg.clone()
    dense_cfg.defrost()
    dense_cfg.MODEL.SACT.MODE = "none"
    dense = build_model(dense_cfg).eval()
    missing = dense.load_state_dict({k: v for k, v in sact.state_dict().items() if ".halting." not in k}, strict=True)
    assert not missing.missing_keys
    return cfg, sact, dense


def raw_images(cfg, n: int, hw) -> List[Dict[str, object]]:
    """The first ``n`` sact_demo_val images resized to ``hw``, as detector inputs (pixel values, cfg format)."""
    return [{"image": img[0], "height": hw[0], "width": hw[1]}
            for img in bs._demo_images(cfg, n, hw, normalize=False)]


def fix_proposals(model, n: int, seed: int = 0) -> None:
    """Make ``model``'s box head run on the same ``n`` random boxes per image in every variant: the RPN still
    runs, its output is replaced (random weights give meaningless, variant-dependent proposal counts; a
    trained detector at 600x1000 keeps POST_NMS_TOPK_TEST = 1000)."""
    from detectron2.structures import Boxes, Instances

    def hook(_module, args):
        images, features, proposals = args[:3]
        fixed = []
        for p in proposals:
            h, w = p.image_size
            g = torch.Generator().manual_seed(seed)
            xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
            wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.2, h * 0.2]) + 8
            inst = Instances((h, w))
            inst.proposal_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w, h]))], 1))
            inst.objectness_logits = torch.zeros(n)
            fixed.append(inst)
        return (images, features, fixed, *args[3:])

    model.roi_heads.register_forward_pre_hook(hook)


def count_ops(fn: Callable[[], object], model) -> Dict[str, int]:
    """Operator calls (all aten ops, nested included), host-synchronising calls and box-head proposals
    (summed over the images) of one call of ``fn``, which runs ``model``."""
    from torch.profiler import profile

    proposals: List[int] = []
    hook = model.roi_heads.register_forward_pre_hook(lambda _m, a: proposals.append(sum(len(p) for p in a[2])))
    with profile() as prof:
        fn()
    hook.remove()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return {"ops": len(events), "syncs": sum(e.name in SYNC_OPS for e in events), "proposals": sum(proposals)}


def variants(sact, dense, inputs, replay: Optional[List[Dict[str, List[torch.Tensor]]]], proposals: int):
    """{name: (fn running every input once, the model it runs)}."""
    folded = fold_norms(dense)
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    folded_onednn = copy.deepcopy(folded)  # backbone: every block folded, oneDNN convs on a channels-last state
    bb, fast = folded_onednn.backbone, folded_resnet_forward(folded_onednn.backbone)

    def fast_forward(x: torch.Tensor) -> Dict[str, torch.Tensor]:
        bb._record_input(x)  # the adaptive-backbone contract (here MODE none) keeps the input sizes
        return fast(x)

    bb.forward = fast_forward
    sact_folded = fold_norms(sact)  # the RPN / box head folded as in the baselines (its backbone folds itself)
    for model in (sact, sact_folded, dense, folded, folded_cl, folded_onednn):
        fix_proposals(model, proposals)

    def run_sact(model) -> Callable[[], None]:
        def run() -> None:
            for i, inp in enumerate(inputs):
                if replay is None:
                    model([inp])
                else:
                    with model.backbone.replay_masks(replay[i]):
                        model([inp])
        return run

    def run(model) -> Callable[[], None]:
        return lambda: [model([inp]) for inp in inputs]

    return {"sact": (run_sact(sact_folded), sact_folded), "sact_d2": (run_sact(sact), sact), "d2": (run(dense), dense),
            "folded": (run(folded), folded), "folded_cl": (run(folded_cl), folded_cl),
            "folded_onednn": (run(folded_onednn), folded_onednn)}


def main(argv=None) -> Dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[50, 101], choices=sorted(CONFIGS))
    p.add_argument("--replay-weights", default="", help="trained SACT detector whose masks are replayed")
    p.add_argument("--replay-config", default="configs/Demo/sact_R_50_C4.yaml")
    p.add_argument("--image-size", type=int, nargs=2, default=[600, 1000], metavar=("H", "W"))
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--proposals", type=int, default=1000, help="box-head proposals per image (the same boxes everywhere)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--target-flops", type=float, default=0.0,
                   help="without --replay-weights: calibrate the halting to this FLOPs fraction (required then)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both detectors")
    args = p.parse_args(argv)
    if not args.replay_weights and not 0 < args.target_flops <= 1:
        p.error("give --replay-weights (a trained SACT detector, e.g. the demo's model_final.pth) or --target-flops")
    if args.replay_weights and not os.path.isfile(args.replay_weights):
        p.error(f"--replay-weights {args.replay_weights}: no such file (run `make demo` first)")
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if args.threads != 1:
            p.error("--clock cpu measures one thread: use it with --threads 1")
        bs.CLOCK = time.thread_time
    hw = tuple(args.image_size)
    replay_all = bs.replayed_masks(args, args.images, hw) if args.replay_weights else None
    replay_depth = _config_depth(args.replay_config) if args.replay_weights else None
    rows = []
    replay_frac: Optional[float] = None  # FLOPs fraction of the replayed masks: the other depths' target
    for depth in sorted(args.depths, key=lambda d: d != replay_depth):  # the replayed depth first
        print(f"[benchmark_detector] R-{depth}: building, calibrating / replaying, counting ops, "
              f"{args.rounds} timed rounds ...", flush=True)
        cfg, sact, dense = build_detectors(CONFIGS[depth], list(args.opts or []))
        inputs = raw_images(cfg, args.images, hw)
        bb = sact.backbone
        normalized = [((inp["image"] - sact.pixel_mean) / sact.pixel_std)[None] for inp in inputs]
        replay = replay_all if replay_all is not None and replay_depth == depth else None
        with torch.no_grad():
            if replay is not None:
                how = f"replayed masks of {args.replay_weights}"
                frac = replay_frac = bs.replayed_fraction(bb, normalized, replay)
            else:
                if replay_all is not None and replay_frac is None:
                    replay_frac = _replayed_fraction(args, replay_depth, normalized, replay_all)
                # > 1: the replayed model never halts, its halting branches add FLOPs
                target = args.target_flops if replay_all is None else min(1.0, replay_frac)
                randomize_halting(bb, images=normalized[:2])
                bias = calibrate_halting(bb, normalized[:2], target)
                frac = flops_fraction(bb, normalized)
                how = f"random halting calibrated to {target:.3f} of the dense FLOPs (bias {bias:+.2f})"
            runs = variants(sact, dense, inputs, replay, args.proposals)
            counts = {k: count_ops(f, m) for k, (f, m) in runs.items()}
            fns = {k: f for k, (f, _) in runs.items()}
            before = bs.load_str()
            t = bs.time_rounds(fns, args.rounds, warmup=1)
        n = len(inputs)
        med = {k: statistics.median(v) * 1e3 / n for k, v in t.items()}
        base = min(BASELINES, key=lambda k: med[k])
        rows.append({"depth": depth, "how": how, "flops_fraction": frac, "ms": med, "baseline": base,
                     "ratio_vs_fastest": bs.median_ratio(t["sact"], t[base]),
                     "ratio_vs_d2": bs.median_ratio(t["sact_d2"], t["d2"]), "counts": counts,
                     "load": f"before {before}; after {bs.load_str()}"})
    rows.sort(key=lambda r: args.depths.index(r["depth"]))
    print(f"whole C4 detector (extractor + RPN + box head), {args.images} demo images at {hw[0]}x{hw[1]}, batch 1, "
          f"fp32, {torch.get_num_threads()} threads, {benchmark_env.describe()}, {args.clock} clock, {args.rounds} rounds "
          f"(median per image)")
    for r in rows:
        print(f"  R-{r['depth']}: {r['how']}; extractor FLOPs {r['flops_fraction']:.3f} of dense; {r['load']}")
    print("SACT: RPN and box head with BN folded as in the folded baselines (its backbone folds itself at inference); "
          "SACT as it runs (box head FrozenBN) is compared with d2 as it runs")
    print("| detector | extractor FLOPs SACT/dense | SACT ms | fastest dense ms (BN folded) | d2 ms | d2 folded ms "
          "| d2 folded channels-last ms | folded, oneDNN backbone ms | latency SACT / fastest dense | SACT as it runs ms "
          "| SACT / d2, both as they run | ops SACT / dense | host syncs SACT / dense | proposals SACT / dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms, c = r["ms"], r["counts"]
        print(f"| SACT R-{r['depth']} C4 | {r['flops_fraction']:.3f} | {ms['sact']:.0f} | {ms[r['baseline']]:.0f} "
              f"| {ms['d2']:.0f} | {ms['folded']:.0f} | {ms['folded_cl']:.0f} | {ms['folded_onednn']:.0f} "
              f"| {r['ratio_vs_fastest']:.3f} | {ms['sact_d2']:.0f} "
              f"| {r['ratio_vs_d2']:.3f} | {c['sact']['ops']} / {c['folded']['ops']} "
              f"| {c['sact']['syncs']} / {c['folded']['syncs']} | {c['sact']['proposals']} / {c['folded']['proposals']} |")
    return {"rows": rows}


def _config_depth(config: str) -> int:
    from sact_det.config import get_sact_cfg

    cfg = get_sact_cfg()
    cfg.merge_from_file(config)
    return int(cfg.MODEL.RESNETS.DEPTH)


def _replayed_fraction(args, depth: int, normalized, replay_all) -> float:
    """FLOPs fraction the replayed masks give on the extractor of the replayed model's depth."""
    _, sact, _ = build_detectors(CONFIGS[depth], list(args.opts or []))
    with torch.no_grad():
        return bs.replayed_fraction(sact.backbone, normalized, replay_all)


if __name__ == "__main__":
    main()
