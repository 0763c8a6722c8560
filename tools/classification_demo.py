#!/usr/bin/env python
"""Does it learn? Dense vs SACT CIFAR-style ResNet on a generated shapes-on-clutter task (CPU, minutes).

1. writes the task (sact_det.classification.demo_task) in the CIFAR-10 pickle format;
2. trains a dense ResNet for DENSE + SACT iterations (checkpoint after DENSE);
3. fine-tunes a SACT ResNet from the dense checkpoint after DENSE for SACT iterations (halting new),
   so both end after the same number of steps with the same learning-rate schedule;
4. evaluates both (accuracy, FLOPs per image) and measures where the SACT model computes:
   mean ponder cost on object pixels vs background pixels of the test images.
Prints a table, writes OUT/summary.json and OUT/ponder_maps.png (images / summed ponder maps).

  python tools/classification_demo.py --out output/classification_demo
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sact_det  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sact_det.classification import get_classification_cfg, load_classifier_weights, train_classifier  # noqa: E402
from sact_det.classification.demo_task import ponder_on_object, save_ponder_grid, write_demo_dataset  # noqa: E402
from sact_det.data.classification import Cifar10Dataset, build_transform  # noqa: E402
from sact_det.modeling.meta_arch.classifier import build_classifier  # noqa: E402


def make_cfg(args, out_dir: str, data: str, mode: str, iters: int, steps, weights: str = ""):
    cfg = get_classification_cfg()
    cfg.merge_from_file("configs/Classification/Base-CIFAR10.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.SACT.MODE, cfg.MODEL.SACT.TAU = mode, args.tau
    cfg.MODEL.SACT.HALT_BIAS_INIT = args.halt_bias_init
    cfg.OUTPUT_DIR, cfg.SEED, cfg.DATALOADER.NUM_WORKERS = out_dir, args.seed, 0
    c = cfg.SACT_CLS
    c.DATA.ROOT = data
    c.CIFAR.NUM_UNITS, c.CIFAR.WIDTH = args.units, args.width
    c.SOLVER.IMS_PER_BATCH, c.SOLVER.BASE_LR, c.SOLVER.STEPS = args.batch, args.lr, tuple(int(s) for s in steps)
    c.SOLVER.MAX_LENGTH, c.SOLVER.CHECKPOINT_PERIOD, c.SOLVER.EVAL_PERIOD = iters, args.dense_iters, 0
    c.SOLVER.MAX_TO_KEEP, c.SOLVER.LOG_PERIOD, c.TEST.IMS_PER_BATCH = 0, 25, 200
    return cfg


def run(cfg, progress: bool):
    t = time.time()
    metrics = train_classifier(cfg, progress=progress)
    return metrics, time.time() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="output/classification_demo")
    p.add_argument("--units", type=int, default=5, help="basic units per stage (5 = ResNet-32)")
    p.add_argument("--width", type=int, default=8, help="channels of stage 1 (CIFAR ResNets: 16)")
    p.add_argument("--dense-iters", type=int, default=500, help="dense pre-training iterations")
    p.add_argument("--sact-iters", type=int, default=300, help="iterations after the dense pre-training")
    p.add_argument("--tau", type=float, default=0.1, help="ponder cost weight (CIFAR reference: 0.01)")
    p.add_argument("--halt-bias-init", type=float, default=-1.5,
                   help="initial halting logit (reference: -3, which needs far more steps than a CPU demo has)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-test", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--reuse-dense", action="store_true",
                   help="reuse OUT/dense from an earlier run with the same data / model / iteration arguments")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="sact_det", abbrev_name="sact")
    data = write_demo_dataset(os.path.join(args.out, "data"), args.num_train, args.num_test, args.seed)
    x, y = args.dense_iters, args.sact_iters
    tail_steps = (y // 2, (4 * y) // 5)
    dense_cfg = make_cfg(args, os.path.join(args.out, "dense"), data, "none", x + y, [x + s for s in tail_steps])
    dense_eval = os.path.join(args.out, "dense", "inference", f"eval_{x + y:07d}.json")
    if args.reuse_dense and os.path.isfile(dense_eval):
        with open(dense_eval) as f:
            dense, t_dense = json.load(f), float("nan")
    else:
        dense, t_dense = run(dense_cfg, not args.no_progress)
    start = os.path.join(args.out, "dense", f"model_{x:07d}.pth")
    sact_cfg = make_cfg(args, os.path.join(args.out, "sact"), data, "sact", y, tail_steps, weights=start)
    sact, t_sact = run(sact_cfg, not args.no_progress)

    model = build_classifier(sact_cfg, 4)
    load_classifier_weights(model, os.path.join(args.out, "sact", "model_final.pth"))
    test = Cifar10Dataset(data, "test")
    tf = build_transform(sact_cfg, train=False)
    images = torch.stack([tf(test[i][0]) for i in range(len(test))])
    masks = np.load(os.path.join(data, "test_masks.npy"))
    where = ponder_on_object(model, images, masks)
    save_ponder_grid(model, test.images, images, os.path.join(args.out, "ponder_maps.png"))

    summary = {"args": vars(args), "dense": dense, "sact": sact, "ponder_object_vs_background": where,
               "seconds": {"dense": t_dense, "sact": t_sact}}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nResNet-{6 * args.units + 2} (width {args.width}), {args.num_train} train / {args.num_test} test images")
    print(f"{'model':<8}{'top-1':>8}{'FLOPs/img mean':>17}{'std':>12}{'vs dense':>10}{'train s':>9}")
    for name, m, t in (("dense", dense, t_dense), (f"SACT", sact, t_sact)):
        print(f"{name:<8}{100 * m['top1']:>7.1f}%{m['flops_mean']:>17.4g}{m['flops_std']:>12.3g}"
              f"{m['flops_mean'] / dense['flops_mean']:>10.1%}{t:>9.0f}")
    tot = where["total"]
    print(f"SACT ponder cost (sum over stages) on object pixels {tot['object']:.3f} vs background "
          f"{tot['background']:.3f}; object above background in {where['images_object_above_background']:.1%} of images")
    for stage in ("res2", "res3", "res4"):
        if stage in where:
            print(f"  {stage}: object {where[stage]['object']:.3f}  background {where[stage]['background']:.3f}")
    return summary


if __name__ == "__main__":
    main()
