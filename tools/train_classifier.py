#!/usr/bin/env python
"""Train / evaluate adaptive ResNet classifiers on CIFAR-10 or ImageNet: every backbone family
(cfg.MODEL.BACKBONE.NAME: SACT / ACT / dense, ConvNet-AIG, BlockDrop). Evaluation prints each
family's statistics: ponder cost per stage (SACT / ACT); block usage, unique policies and
per-unit execution rates (ConvNet-AIG / BlockDrop).

Examples:
  # CIFAR-10 SACT ResNet-32, tau 0.01, 2 processes (GPUs, or gloo CPU processes without CUDA)
  python tools/train_classifier.py --config-file configs/Classification/cifar10_resnet32_sact_tau0.01.yaml \
      --num-gpus 2 OUTPUT_DIR output/cifar_sact SACT_CLS.DATA.ROOT datasets/cifar-10-batches-py
  # ConvNet-AIG / BlockDrop CIFAR-10 ResNet-110 (BlockDrop: curriculum on a trained dense ResNet-110)
  python tools/train_classifier.py --config-file configs/Classification/cifar10_resnet110_aig.yaml \
      OUTPUT_DIR output/cifar_aig SACT_CLS.DATA.ROOT datasets/cifar-10-batches-py
  # resume after an interruption (continues from OUTPUT_DIR/last_checkpoint)
  python tools/train_classifier.py --config-file ... --resume OUTPUT_DIR output/cifar_sact
  # evaluate once (prints "Total Flops/mean[...]" etc., writes JSON)
  python tools/train_classifier.py --config-file ... --eval-only MODEL.WEIGHTS output/cifar_sact/model_final.pth
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sact_det  # noqa: E402,F401  (compat patches first)
import torch  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from sact_det.classification import evaluate_checkpoint, get_classification_cfg, train_classifier  # noqa: E402
from sact_det.classification.checkpoint import last_checkpoint  # noqa: E402
from sact_det.compat import launch  # noqa: E402


def setup(args):
    cfg = get_classification_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sact_det")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    if args.threads:
        torch.set_num_threads(args.threads)
    if comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        weights = cfg.MODEL.WEIGHTS or last_checkpoint(cfg.OUTPUT_DIR)
        if not weights:
            raise SystemExit(f"--eval-only needs MODEL.WEIGHTS or a checkpoint in OUTPUT_DIR={cfg.OUTPUT_DIR}")
        return evaluate_checkpoint(cfg, weights, json_path=args.json, progress=not args.no_progress)
    metrics = train_classifier(cfg, resume=args.resume, progress=not args.no_progress)
    if comm.is_main_process() and args.json:
        from sact_det.classification.evaluator import write_metrics_json

        write_metrics_json(metrics, args.json)
    return metrics


def get_parser():
    parser = default_argument_parser(__doc__)
    parser.add_argument("--json", default="", help="also write the final metrics to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a tqdm progress bar")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = torch default)")
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
