#!/usr/bin/env python
"""Convert a checkpoint of the original SACT TensorFlow code into sact_det weights (no TensorFlow needed).

INPUT: a TF V2 checkpoint of github.com/mfigurnov/sact (ImageNet ResNet v2 or CIFAR ResNet; SACT,
ACT or dense): a prefix (models/x/model.ckpt-NNN), its .index file, a folder with one checkpoint
(or a `checkpoint` state file naming one), or a released .tar.gz as downloaded.
OUTPUT_DIR receives
  model_classifier.pth  MODEL.WEIGHTS of tools/train_classifier.py (with the printed classifier keys)
  model_detector.pkl    MODEL.WEIGHTS of the C4 detector, ImageNet nets only (with the printed detector keys)
Every variable must find its place and every parameter of the classifier built from the printed
keys must get a value (strict load); otherwise the error names them.

  python tools/convert_tf_checkpoint.py imagenet_101_sact_5e-3.tar.gz pretrained/imagenet_101_sact_5e-3
  python tools/convert_tf_checkpoint.py cifar10_resnet_5_sact_1e-2.tar.gz pretrained/cifar10_resnet_5_sact_1e-2
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sact_det  # noqa: E402,F401  (compat patches first)
from sact_det.convert.original import ConversionError, config_opts, config_yaml, convert_tf_checkpoint  # noqa: E402
from sact_det.convert.tf_checkpoint import TFCheckpointError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="TF checkpoint prefix / .index / folder / released .tar.gz")
    parser.add_argument("output_dir", help="folder for model_classifier.pth and model_detector.pkl")
    parser.add_argument("--no-crc", action="store_true", help="skip the crc32c check of the tensor data")
    args = parser.parse_args(argv)
    try:
        result = convert_tf_checkpoint(args.input, args.output_dir, check_crc=not args.no_crc)
    except (TFCheckpointError, ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sections = [("classifier", result["classifier"], result["classifier_config"], "tools/train_classifier.py"),
                ("detector", result["detector"], result["detector_config"], "tools/train_net.py")]
    for what, path, keys, tool in sections:
        if path is None:
            continue
        print(f"\n# {what} config keys (YAML), use with MODEL.WEIGHTS {path}:")
        print(config_yaml(keys))
        print(f"# or on the command line of {tool}:")
        print(f"MODEL.WEIGHTS {path} {config_opts(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
