"""tools/seed_table.py: mean +- sample std over seeds, grouped by the folder above each run."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import seed_table  # noqa: E402


def _run(folder, ap, pct):
    os.makedirs(folder)
    with open(os.path.join(folder, "eval_results.json"), "w") as f:
        json.dump({"datasets": {"sact_demo_val": {"bbox": {"AP": ap, "AP50": ap + 30},
                                                  "flops": {"pct_of_dense_mean": pct, "extractor_gflops_mean": 1.0}}},
                   "sact": {"mode": "sact"}}, f)
    return str(folder)


def test_mean_and_sample_std_per_group(tmp_path):
    runs = [_run(tmp_path / "sact" / f"seed{i}", ap, pct) for i, (ap, pct) in enumerate([(40, 60), (42, 70), (44, 80)])]
    runs.append(_run(tmp_path / "dense" / "seed1", 41.5, 100))
    text = seed_table.main(runs + ["--output", str(tmp_path / "t.md")])
    sact_row = next(ln for ln in text.splitlines() if ln.startswith("| sact |"))
    # AP 40, 42, 44: mean 42, sample std 2; FLOPs 60, 70, 80: mean 70, std 10
    assert "| 3 | 42.00 ± 2.00 | 72.00 ± 2.00 | 70.00 ± 10.00 |" in sact_row
    assert "40.00, 70.00; 42.00, 72.00; 44.00, 74.00" in sact_row
    assert "| dense | 1 | 41.50 | 71.50 | 100.00 |" in text
    assert (tmp_path / "t.md").read_text().strip() == text


def test_missing_results_is_a_clear_error(tmp_path):
    (tmp_path / "a" / "seed1").mkdir(parents=True)
    with pytest.raises(SystemExit, match="neither eval_results.json nor metrics.json"):
        seed_table.main([str(tmp_path / "a" / "seed1")])
