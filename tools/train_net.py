#!/usr/bin/env python
"""Train / evaluate a SACT Faster R-CNN (detectron2 style).

    python tools/train_net.py --config-file configs/Demo/sact_R_50_C4.yaml
    python tools/train_net.py --config-file CFG --num-gpus 8 [--resume] [KEY VALUE ...]
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python tools/train_net.py --config-file CFG --eval-only --random-weights   # score random weights

--eval-only needs MODEL.WEIGHTS (or --resume with a checkpoint in OUTPUT_DIR) unless --random-weights
is given; a MODEL.WEIGHTS file that does not exist and MODEL.DEVICE cuda without CUDA are errors.
Evaluation prints COCO AP and a FLOPs table (feature-extractor FLOPs per image, % of the dense
same-architecture and ResNet-101 extractors, ponder cost per stage) and writes them to
OUTPUT_DIR/eval_results.json (and metrics.json during training). Without CUDA, --num-gpus N
starts N CPU processes joined with gloo; --dist-url auto picks a free local port.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sact_det  # noqa: E402,F401  (compat patches + registration; must precede detectron2 imports)
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from sact_det.compat import launch  # noqa: E402
from sact_det.engine.checkpoint import AtomicDetectionCheckpointer  # noqa: E402
from sact_det.engine.checks import add_random_weights_flag, check_weights  # noqa: E402
from sact_det.engine.setup_config import ConfigError, load_config  # noqa: E402
from sact_det.engine.trainer import Trainer  # noqa: E402


def load_checked_config(args):
    """Config from --config-file and overrides; ConfigError for a bad config, MODEL.DEVICE or MODEL.WEIGHTS."""
    cfg = load_config(args.config_file, args.opts)
    if args.random_weights and not args.eval_only:
        raise ConfigError("--random-weights only applies to --eval-only (training starts from MODEL.WEIGHTS, "
                          "or from random weights when it is empty)")
    check_weights(cfg.MODEL.WEIGHTS, required=args.eval_only, random_weights=args.random_weights,
                  resume_dir=cfg.OUTPUT_DIR if args.resume else None)
    return cfg


def setup(args):
    """Checked config, frozen; logging, output dir and seeds via default_setup."""
    cfg = load_checked_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sact_det")  # FLOPs table, notes
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                                  resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.set_defaults(dist_url="auto")
    add_random_weights_flag(parser)
    for action in parser._actions:
        if action.dest == "num_gpus":
            action.help = "processes per machine: GPUs, or CPU processes (gloo) when CUDA is unavailable"
        if action.dest == "dist_url":
            action.help = "initialization URL for torch.distributed; 'auto' = a free port on this machine"
    return parser


def cli(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        load_checked_config(args)  # fail early, before any process is started
    except ConfigError as e:
        sys.exit(f"train_net.py: error: {e}")
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
