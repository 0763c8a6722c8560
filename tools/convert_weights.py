#!/usr/bin/env python
"""Convert ImageNet ResNet weights into a detectron2-loadable .pkl in SACT backbone names.

Input: a torchvision ResNet state dict (.pth, e.g. resnet101-*.pth) or a sact_det classification
checkpoint (model_final.pth of tools/train_classifier.py with SACT_CLS.ARCH imagenet).
Output: {"model": {"stem.conv1.weight", "res2.0.conv1.norm.weight", ..., "res3.1.halting.*", "linear.*"},
"__author__": "sact_det", "matching_heuristics": True, "sact_det": {notes, detector_config}}.
Use it as MODEL.WEIGHTS of the detector together with the printed config keys, e.g.
MODEL.RESNETS.STRIDE_IN_1X1 False for torchvision weights (their stride is in the 3x3 conv).

  python tools/convert_weights.py resnet101-cd907fc2.pth pretrained/R-101-torchvision.pkl
  python tools/convert_weights.py output/imagenet_R_101_sact_tau0.005/model_final.pth pretrained/R-101-sact.pkl
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sact_det  # noqa: E402,F401
from sact_det.classification.export import convert_to_d2_pkl  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="torchvision .pth or sact_det classification checkpoint .pth")
    parser.add_argument("output", help="output .pkl for the detector's MODEL.WEIGHTS")
    args = parser.parse_args(argv)
    data = convert_to_d2_pkl(args.input, args.output)
    n = len(data["model"])
    halting = sum(".halting." in k for k in data["model"])
    print(f"wrote {args.output}: {n} arrays ({halting} halting), source: {data['sact_det']['source']}")
    print(data["sact_det"]["notes"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
