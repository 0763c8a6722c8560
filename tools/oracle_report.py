#!/usr/bin/env python
"""Compare the original SACT networks (cfg.MODEL.SACT.VARIANT original) with the original TF code's outputs.

For every model folder of the oracle (default ../shared/oracle), both variants and all input sets:
convert the TF checkpoint (sact_det.convert), run the model built from config, and print a markdown
table of the largest difference per quantity (floats: max|diff| / max(1, max|ref|); integers: exact).

  python tools/oracle_report.py [--oracle ../shared/oracle] [--models imagenet_small_sact ...]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sact_det  # noqa: E402,F401
import torch  # noqa: E402

from sact_det.modeling.original.oracle import ORACLE_MODELS, check_oracle_model, report_table  # noqa: E402


def main() -> int:
    default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "oracle")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--oracle", default=os.path.normpath(default), help="oracle folder (one sub-folder per model)")
    p.add_argument("--models", nargs="*", default=list(ORACLE_MODELS), help="model folders to check")
    args = p.parse_args()
    missing = [m for m in args.models if not os.path.isfile(os.path.join(args.oracle, m, "summary.json"))]
    if missing:
        p.error(f"no oracle model folder (with summary.json) for {missing} under {args.oracle}; "
                "pass --oracle /path/to/shared/oracle")
    torch.set_num_threads(1)
    reports = {m: check_oracle_model(os.path.join(args.oracle, m)) for m in args.models}
    print(report_table(reports))
    failed = [f"{m} {v}/{s} {k}" for m, runs in reports.items() for (v, s), rep in runs.items()
              for k, r in rep.items() if not r["ok"]]
    print(f"\n{'all within tolerance' if not failed else 'FAILED: ' + '; '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
