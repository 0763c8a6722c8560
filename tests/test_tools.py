"""tools/draw_ponder_maps.py, tools/plot_tradeoff.py and tools/benchmark_train.py on small inputs."""
import csv
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
os.environ.setdefault("SACT_KEEP_FREED_MEMORY", "0")  # the tools' allocator setting stays out of the test process

import benchmark_detector  # noqa: E402
import benchmark_sparse  # noqa: E402
import benchmark_train  # noqa: E402
import draw_ponder_maps  # noqa: E402
import plot_tradeoff  # noqa: E402

DEMO_CFG = "configs/Demo/sact_R_50_C4.yaml"
SMALL_TEST = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "MODEL.RPN.POST_NMS_TOPK_TEST", "20"]


# ----------------------------------------------------------------------------- plot_tradeoff
def _write_runs(tmp_path):
    sact = tmp_path / "sact"
    sact.mkdir()
    (sact / "eval_results.json").write_text(json.dumps({
        "datasets": {"sact_demo_val": {
            "bbox": {"AP": 40.0, "AP50": 60.0, "AP75": 41.0},
            "flops": {"extractor_gflops_mean": 0.3, "extractor_gflops_std": 0.05, "dense_gflops_mean": 0.6,
                      "pct_of_dense_mean": 50.0, "pct_of_dense_std": 8.0, "pct_of_r101_mean": 5.0,
                      "pct_of_r101_std": 0.8},
            "ponder_eval": {"total_mean": 8.0, "units_frac": 0.4}}},
        "sact": {"mode": "sact", "tau": 0.01, "depth": 50}}))
    dense = tmp_path / "dense"
    dense.mkdir()
    lines = [{"iteration": 19, "total_loss": 1.0},
             {"iteration": 99, "bbox/AP": 42.5, "bbox/AP50": 61.0, "flops/extractor_gflops_mean": 0.6,
              "flops/extractor_gflops_std": 0.0, "flops/pct_of_dense_mean": 100.0, "flops/pct_of_r101_mean": 10.0},
             {"iteration": 119, "total_loss": 0.5}]
    (dense / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (dense / "config.yaml").write_text("MODEL:\n  RESNETS:\n    DEPTH: 50\n  SACT:\n    MODE: none\n    TAU: 0.0\n"
                                       "DATASETS:\n  TEST:\n  - sact_demo_val\n")  # as detectron2 dumps it
    return sact, dense


def test_plot_tradeoff_table_csv_png(tmp_path, capsys):
    sact, dense = _write_runs(tmp_path)
    out = tmp_path / "plots" / "tradeoff"
    rows = plot_tradeoff.main([str(sact), str(dense), "--x", "dense", "--output", str(out)])
    assert [r["label"] for r in rows] == ["SACT R-50 tau=0.01", "dense R-50"]
    assert rows[1]["AP"] == 42.5 and rows[1]["pct_dense"] == 100.0  # last evaluation line of metrics.json
    with open(str(out) + ".csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[0]["AP"]) == 40.0 and float(table[0]["pct_dense_std"]) == 8.0
    assert float(table[0]["pct_r101"]) == 5.0 and table[1]["mode"] == "none"
    img = Image.open(str(out) + ".png")
    assert img.size[0] > 400 and np.asarray(img).std() > 0
    printed = capsys.readouterr().out
    assert "| SACT R-50 tau=0.01 | 40.00 | 60.00 | 0.300 ± 0.050 | 0.600 | 50.0 ± 8.0 |" in printed


def test_plot_tradeoff_paper_points_and_errors(tmp_path):
    sact, _ = _write_runs(tmp_path)
    rows = plot_tradeoff.main([str(sact), "--paper", "--labels", "mine", "--output", str(tmp_path / "p")])
    assert rows[0]["label"] == "mine" and os.path.isfile(tmp_path / "p.png")
    with pytest.raises(SystemExit, match="neither eval_results.json nor metrics.json"):
        plot_tradeoff.main([str(tmp_path), "--output", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="2 labels for 1 runs"):
        plot_tradeoff.main([str(sact), "--labels", "a,b"])


# ----------------------------------------------------------------------------- draw_ponder_maps
def test_map_extent_and_input_expansion(tmp_path):
    # 512x384 image resized to 256x192; a 12x16 map at stride 16 covers 192x256 resized = 384x512 original px
    assert draw_ponder_maps.map_extent((12, 16), (384, 512), (192, 256), 16) == (0.0, 512.0, 384.0, 0.0)
    for name in ("b.jpg", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert draw_ponder_maps.expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    assert draw_ponder_maps.expand_inputs([str(tmp_path / "*.jpg"), str(tmp_path / "b.jpg")]) == [str(tmp_path / "b.jpg")]
    with pytest.raises(FileNotFoundError, match="no image matches"):
        draw_ponder_maps.expand_inputs([str(tmp_path / "*.bmp")])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        draw_ponder_maps.expand_inputs([str(tmp_path / "missing.jpg")])


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory):
    """Weights of the demo SACT detector (random init) saved by the toolkit's checkpointer."""
    from sact_det.engine.checkpoint import AtomicDetectionCheckpointer
    from sact_det.engine.setup_config import load_config
    from sact_det.engine.trainer import Trainer

    folder = tmp_path_factory.mktemp("weights")
    model = Trainer.build_model(load_config(DEMO_CFG))
    AtomicDetectionCheckpointer(model, str(folder)).save("model_final")
    return str(folder / "model_final.pth")


def test_draw_ponder_maps_on_image_files(tmp_path, trained_weights):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 180, 3), dtype=np.uint8)).save(tmp_path / "one.jpg")
    Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(tmp_path / "two.png")
    out = tmp_path / "maps"
    written = draw_ponder_maps.main(["--config-file", DEMO_CFG, "--input", str(tmp_path / "*.jpg"),
                                     str(tmp_path / "two.png"), "--output", str(out)]
                                    + SMALL_TEST + ["MODEL.WEIGHTS", trained_weights])
    assert written == [str(out / "one_ponder.png"), str(out / "two_ponder.png")]
    for path in written:
        img = np.asarray(Image.open(path).convert("RGB"))
        assert img.shape[1] > 1.8 * img.shape[0]  # two panels side by side
        left, right = img[:, : img.shape[1] // 2], img[:, img.shape[1] // 2:]
        assert left.std() > 10 and right.std() > 10


def test_draw_ponder_maps_on_dataset_split(tmp_path, trained_weights):
    written = draw_ponder_maps.main(["--config-file", DEMO_CFG, "--dataset", "sact_demo_tiny_val", "--num-images", "1",
                                     "--output", str(tmp_path)] + SMALL_TEST + ["MODEL.WEIGHTS", trained_weights])
    assert len(written) == 1 and os.path.isfile(written[0])


def test_draw_ponder_maps_draws_the_unit_policy_of_a_gated_detector(tmp_path):
    """AIG (one decision per unit and image): the right panel is the policy grid, orange where a unit ran."""
    written = draw_ponder_maps.main(["--config-file", "configs/Demo/aig_R_50_C4.yaml", "--dataset",
                                     "sact_demo_tiny_val", "--num-images", "1", "--output", str(tmp_path),
                                     "--random-weights"] + SMALL_TEST)
    img = np.asarray(Image.open(written[0]).convert("RGB")).astype(int)
    right = img[:, img.shape[1] // 2:]
    orange = (abs(right[..., 0] - 255) < 5) & (abs(right[..., 1] - 140) < 5) & (right[..., 2] < 5)
    assert orange.sum() > 500  # untrained gates open: first units always run, so cells are orange


def test_draw_ponder_maps_bad_inputs(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(SystemExit, match=r"(?i)cannot (read|decode) image .*broken\.jpg"):
        draw_ponder_maps.main(["--config-file", DEMO_CFG, "--input", str(bad), "--output", str(tmp_path),
                               "--random-weights"] + SMALL_TEST)
    with pytest.raises(SystemExit, match=r"input image not found: .*nothere\.jpg"):
        draw_ponder_maps.main(["--config-file", DEMO_CFG, "--input", str(tmp_path / "nothere.jpg"),
                               "--output", str(tmp_path), "--random-weights"])
    with pytest.raises(SystemExit, match="no adaptive stage"):
        draw_ponder_maps.main(["--config-file", "configs/Demo/faster_rcnn_R_50_C4.yaml", "--dataset",
                               "sact_demo_tiny_val", "--num-images", "1", "--output", str(tmp_path),
                               "--random-weights"] + SMALL_TEST)


# ----------------------------------------------------------------------------- benchmark_train
def test_benchmark_train_prints_ratio(tmp_path, capsys):
    """A real (tiny) run of both models: every timed iteration recorded and written."""
    res = benchmark_train.main(["--config-file", DEMO_CFG, "--iters", "2", "--warmup", "0", "--batches", "1",
                                "--json", str(tmp_path / "b.json"),
                                "DATASETS.TRAIN", '("sact_demo_tiny_train",)', "SOLVER.IMS_PER_BATCH", "2",
                                "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96"])
    assert res["sact"]["n"] == res["dense"]["n"] == 2
    assert json.load(open(tmp_path / "b.json"))["ratio_mean"] == res["ratio_mean"]
    assert "ratio SACT / dense" in capsys.readouterr().out


def test_benchmark_train_fixed_proposals_reach_both_box_heads(monkeypatch):
    """--fixed-proposals N: both models' box heads train on the same N proposals per image (+ the ground truth
    boxes detectron2 adds), whatever their RPNs propose."""
    from detectron2.modeling.roi_heads import ROIHeads

    seen = []
    original = ROIHeads.label_and_sample_proposals

    def spy(self, proposals, targets):
        seen.append([(len(p), p.proposal_boxes.tensor.sum().item()) for p in proposals])
        return original(self, proposals, targets)

    monkeypatch.setattr(ROIHeads, "label_and_sample_proposals", spy)
    res = benchmark_train.main(["--config-file", DEMO_CFG, "--iters", "1", "--warmup", "0", "--batches", "1",
                                "--fixed-proposals", "9", "DATASETS.TRAIN", '("sact_demo_tiny_train",)',
                                "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(96,)",
                                "INPUT.MAX_SIZE_TRAIN", "96"])
    assert res["fixed_proposals"] == 9
    assert len(seen) >= 2 and all(n == 9 for call in seen for n, _ in call)
    assert len({tuple(call) for call in seen}) == 1  # the same boxes in every call, SACT and dense alike


def test_benchmark_train_ratios_from_known_step_times(monkeypatch, capsys):
    """Step times injected per model: the medians, means and ratios are the hand-computed ones."""
    wall = {"sact": [0.3, 0.5, 0.1], "dense": [0.2, 0.2, 0.8]}  # medians 0.3 / 0.2, means 0.3 / 0.4
    cpu = {"sact": [0.9, 0.6, 0.6], "dense": [0.4, 0.4, 0.1]}   # medians 0.6 / 0.4
    monkeypatch.setattr(benchmark_train, "build",
                        lambda cfg: ("dense" if cfg.MODEL.SACT.MODE == "none" else "sact", None))
    monkeypatch.setattr(benchmark_train, "step", lambda name, _opt, _batch: (wall[name].pop(0), cpu[name].pop(0)))
    monkeypatch.setattr(benchmark_train, "saved_activation_bytes", lambda name, _batch: {"sact": 3, "dense": 2}[name] << 20)
    res = benchmark_train.main(["--config-file", DEMO_CFG, "--iters", "3", "--warmup", "0", "--batches", "1",
                                "DATASETS.TRAIN", '("sact_demo_tiny_train",)', "SOLVER.IMS_PER_BATCH", "1"])
    assert res["ratio_median"] == pytest.approx(1.5)
    assert res["ratio_mean"] == pytest.approx(0.75)
    assert res["cpu_ratio_median"] == pytest.approx(1.5)
    assert res["saved_mib"] == {"sact": 3.0, "dense": 2.0} and res["memory_ratio"] == pytest.approx(1.5)
    out = capsys.readouterr().out
    assert "ratio SACT / dense: 1.500x (wall median), 0.750x (wall mean), 1.500x (CPU median)" in out
    assert "sact 3.0 MiB, dense 2.0 MiB, ratio 1.500x" in out


def test_benchmark_train_rejects_different_depths(tmp_path):
    dense = tmp_path / "dense_r18.yaml"
    dense.write_text(f'_BASE_: "{os.path.join(REPO, "configs/Demo/faster_rcnn_R_50_C4.yaml")}"\n'
                     "MODEL:\n  RESNETS:\n    DEPTH: 18\n    RES2_OUT_CHANNELS: 64\n")
    with pytest.raises(SystemExit, match="depths differ: 50 vs 18"):
        benchmark_train.main(["--config-file", DEMO_CFG, "--dense-config", str(dense), "--iters", "1"])


# ----------------------------------------------------------------------------- benchmark_detector
def test_benchmark_detector_replays_masks_and_equalizes_proposals(capsys, trained_weights):
    """The full-width R-50 C4 detector on the demo detector's replayed masks, at a toy size: every variant's box
    head gets the same proposals, and the extractor FLOPs are those of the replayed masks."""
    res = benchmark_detector.main(["--replay-weights", trained_weights, "--replay-config", DEMO_CFG, "--depths", "50",
                                   "--image-size", "64", "96", "--images", "1", "--rounds", "1", "--proposals", "7"])
    (row,) = res["rows"]
    assert row["how"].startswith("replayed masks")
    assert {c["proposals"] for c in row["counts"].values()} == {7}
    assert 0.0 < row["flops_fraction"] <= 1.1 and row["baseline"] in ("folded", "folded_cl", "folded_onednn")
    assert row["counts"]["sact"]["syncs"] > 0 and row["counts"]["folded"]["ops"] > 0
    assert "| SACT R-50 C4 |" in capsys.readouterr().out


# ----------------------------------------------------------------------------- benchmark_sparse
_FAULTS_SCRIPT = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import benchmark_env, torch
counts = []
for _ in range(4):  # a 40 MiB tensor (above glibc's largest mmap threshold, 32 MiB), written, freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(10 << 20)
    x.fill_(1.0)
    del x
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(benchmark_env.KEEP_FREED_MEMORY, *counts)
"""


def test_benchmark_env_keeps_freed_memory_for_reuse():
    """With SACT_KEEP_FREED_MEMORY=1 a freed 40 MiB buffer is reused without page faults (counted by the kernel);
    with 0 (glibc's default) every new one faults all its pages again (torch's 2 MiB-aligned THP allocations,
    the tools' default; 2 MiB or 4 KiB pages, whatever the kernel gives)."""
    import subprocess

    counts = {}
    for keep in ("1", "0"):
        env = dict(os.environ, SACT_KEEP_FREED_MEMORY=keep, THP_MEM_ALLOC_ENABLE="1", OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, os.path.join(REPO, "tools")], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        if keep == "1" and out[0] != "True":
            pytest.skip("no glibc mallopt here: the setting does not apply")
        counts[keep] = [int(c) for c in out[1:]]
    for keep, (first, *_, third, fourth) in counts.items():
        assert first > 100, (keep, counts)  # the first buffer faults either way
        if keep == "1":
            assert max(third, fourth) < 0.05 * first, counts
        else:
            assert min(third, fourth) > 0.5 * first, counts


def test_benchmark_sparse_runs_end_to_end_at_a_tiny_size(capsys, trained_weights):
    """Both parts at toy sizes, the extractor on the masks a (demo) SACT detector produces: every table row."""
    common = ["--threads", "1", "--rounds", "1", "--rounds-extractor", "1", "--densities", "0.5", "1.0",
              "--height", "6", "--width", "8", "--config", DEMO_CFG, "--images", "1", "--image-size", "64", "96"]
    benchmark_sparse.main(common + ["--replay-weights", trained_weights, "--replay-config", DEMO_CFG, "--breakdown"])
    out = capsys.readouterr().out
    assert "replayed: without the halting, accumulation and rest" in out  # --breakdown's estimate below the table
    unit_rows = [ln for ln in out.splitlines() if ln.startswith("| 50 % |") or ln.startswith("| 100 % |")]
    assert len(unit_rows) == 4  # two densities x two tables
    # a full mask: the sparse unit runs every conv everywhere, FLOPs sparse/dense = 1
    assert all(ln.split("|")[2].strip() == "1.000" for ln in unit_rows if ln.startswith("| 100 % |"))
    (replayed,) = [ln for ln in out.splitlines() if ln.startswith("| replayed |")]
    assert 0.0 < float(replayed.split("|")[2]) < 1.1  # above 1 when few positions halt: halting branches cost
    # the same-round auto run without the native kernels: a time where they are built, "-" where not
    torch_only_ms = replayed.split("|")[9].strip()
    assert (float(torch_only_ms) > 0) if benchmark_sparse.native.available() else torch_only_ms == "-"


def test_benchmark_sparse_halt_norm_option_calibrates_a_fixed_statistics_norm(capsys, recwarn):
    """--halt-norm FrozenBN: the untrained extractor's halting norms are FrozenBN, their statistics come from the
    calibration images, so the calibration reaches the target (raw maps would put every offset out of reach)."""
    coco = "configs/COCO-Detection/sact_R_50_C4_tau0.005_1x.yaml"  # full widths: raw maps far from unit variance
    benchmark_sparse.main(["--part", "extractor", "--threads", "1", "--rounds-extractor", "1", "--config", coco,
                           "--images", "2", "--image-size", "96", "128", "--target-flops", "0.7",
                           "--halt-norm", "FrozenBN"])
    out = capsys.readouterr().out
    assert "halting norm FrozenBN" in out
    (row,) = [ln for ln in out.splitlines() if ln.startswith("| bias ")]
    assert abs(float(row.split("|")[2]) - 0.7) < 0.05, row
    assert not [w for w in recwarn if "calibrate_halting" in str(w.message)]


def test_benchmark_sparse_breakdown_times_every_unit_that_ran(capsys):
    """--breakdown: one row per (stage, unit) that ran, its active fraction that of the masks the stage recorded,
    every timed part non-negative; the tool's patches are undone afterwards."""
    from argparse import Namespace

    from sact_det.modeling.core.flop_rules import conv_flops, dilate, unit_convs
    from sact_det.modeling.execution import sparse, sparse_halting

    before = (sparse.sparse_unit_forward, sparse_halting.sparse_halting, sparse_halting.masked_accumulate_)
    cfg, sact_bb, _ = benchmark_sparse._extractors(Namespace(config=DEMO_CFG, weights=""))
    benchmark_sparse.randomize_halting(sact_bb)
    images = [benchmark_sparse.torch.randn(1, 3, 64, 96)]
    rows = benchmark_sparse.unit_breakdown(sact_bb, images, max_density=0.75, rounds=1)
    assert (sparse.sparse_unit_forward, sparse_halting.sparse_halting, sparse_halting.masked_accumulate_) == before
    expected = {(name, l + 1): float(m.float().mean()) for name, p in sact_bb.last_ponder.items()
                for l, m in enumerate(p.masks)}
    ran = {(r["stage"], r["unit"]): r for r in rows if "density" in r}
    assert set(ran) == set(expected)
    for key, r in ran.items():
        assert abs(r["density"] - expected[key]) < 1e-6
        assert r["sact"] > 0 and r["dense"] > 0
        # the unit's FLOPs fraction is the library's FLOP counter's (first conv on the dilated mask)
        block, mask = getattr(sact_bb, key[0])[key[1]], sact_bb.last_ponder[key[0]].masks[key[1] - 1][0, 0]
        convs = unit_convs(block)
        n, nd = float(mask.sum()), float(dilate(mask[None])[0].sum())
        want = (conv_flops(convs[0], nd) + sum(conv_flops(c, n) for c in convs[1:])) \
            / sum(conv_flops(c, mask.numel()) for c in convs)
        assert abs(r["flops"] - want) < 1e-9 and r["flops"] >= r["density"] - 1e-9
    assert all(r.get("halting", 0) >= 0 and r.get("accumulation", 0) >= 0 for r in rows)
    for name in sact_bb.adaptive_stages:  # a stage's time holds its parts (unit 0, units, halting, accumulation)
        (head,) = [r for r in rows if r["stage"] == name and r["unit"] == 0]
        parts = sum(r.get(k, 0.0) for r in rows if r["stage"] == name
                    for k in ("first", "sact", "halting", "accumulation"))
        assert head["first"] > 0 and head["stage_time"] >= parts * 0.999
    benchmark_sparse.print_breakdown(rows)
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("| res")]
    assert len(table) == len(rows) and "the rest of the stages' work" in out


def test_benchmark_sparse_breakdown_compares_units_with_proportional_cost(capsys):
    """The units' saving against units costing in proportion to their FLOPs and to their active positions, by hand:
    two units of a 10 ms dense cost at 50 % and 80 % active (60 % and 90 % of the FLOPs), run in 7 and 9 ms, save
    4 ms of 0.4 * 10 + 0.1 * 10 = 5 ms (FLOPs) and of 0.5 * 10 + 0.2 * 10 = 7 ms (positions)."""
    rows = [{"stage": "res2", "unit": 0, "first": 0.02, "halting": 0.001, "stage_time": 0.04},
            {"stage": "res2", "unit": 1, "density": 0.5, "flops": 0.6, "sact": 0.007, "dense": 0.010},
            {"stage": "res2", "unit": 2, "density": 0.8, "flops": 0.9, "sact": 0.009, "dense": 0.010}]
    overhead = benchmark_sparse.print_breakdown(rows)
    out = capsys.readouterr().out
    assert "the units that ran save 4 ms of the 5 ms that units costing in proportion to their FLOPs" in out
    assert "(0.80;" in out and "and of the 7 ms in proportion to their active positions (0.57;" in out
    assert abs(overhead - (40 - 20 - 16)) < 1e-9  # halting 1 + the rest 3 (stage 40 - unit 0 20 - units 16 - halting 1)
