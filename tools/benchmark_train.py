#!/usr/bin/env python
"""Training-iteration time of a SACT detector against the dense detector of the same depth.

Both models are built from the same config (the dense one with MODEL.SACT.MODE none, or from
--dense-config), get the same pre-loaded training batches, and are timed in one run, interleaved
(A B B A ...) so that machine load affects both alike. One iteration = forward, backward and
optimizer step (data loading excluded). Prints per-model median / mean wall-clock seconds and
process CPU seconds (all threads; robust on a shared machine) and the SACT / dense ratios, and the
activation memory of each (bytes of the tensors a training forward saves for backward).

    python tools/benchmark_train.py --config-file configs/Demo/sact_R_50_C4.yaml --iters 10
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import benchmark_env  # noqa: E402  (before torch: allocator settings)
import sact_det  # noqa: E402,F401
import torch  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from sact_det.engine.setup_config import ConfigError, load_config  # noqa: E402
from sact_det.engine.trainer import Trainer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="SACT (or ACT) detector config")
    p.add_argument("--dense-config", default="", help="dense detector config (default: the same with MODE none)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per model first")
    p.add_argument("--batches", type=int, default=4, help="distinct training batches, reused cyclically")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--json", default="", help="also write the numbers to this JSON file")
    p.add_argument("--fixed-proposals", type=int, default=0,
                   help="N > 0: both box heads train on the same N random proposals per image (the RPNs still run "
                        "and train; untrained RPNs otherwise propose different, model-dependent box sets)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both configs")
    return p.parse_args(argv)


def build(cfg):
    """(model in train mode, optimizer) as the Trainer builds them."""
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    model.train()
    return model, Trainer.build_optimizer(cfg, model)


def saved_activation_bytes(model, batch) -> int:
    """Bytes of the tensors one training forward saves for backward (unique storages, parameters excluded:
    the activation memory that limits the batch size), then backward to free them."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = model(batch)
    sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def step(model, optimizer, batch) -> Tuple[float, float]:
    """One training iteration; returns (wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    losses = model(batch)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(args) -> Dict[str, object]:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    opts = list(args.opts or [])
    cfg_sact = load_config(args.config_file, opts)
    if args.dense_config:
        cfg_dense = load_config(args.dense_config, opts)
    else:
        cfg_dense = load_config(args.config_file, opts + ["MODEL.SACT.MODE", "none"])
    if cfg_sact.MODEL.RESNETS.DEPTH != cfg_dense.MODEL.RESNETS.DEPTH:
        raise ConfigError(f"depths differ: {cfg_sact.MODEL.RESNETS.DEPTH} vs {cfg_dense.MODEL.RESNETS.DEPTH}")
    loader = iter(Trainer.build_train_loader(cfg_sact))
    batches = [next(loader) for _ in range(max(1, args.batches))]
    models = {"sact": build(cfg_sact), "dense": build(cfg_dense)}
    if args.fixed_proposals > 0:
        from benchmark_detector import fix_proposals

        for model, _ in models.values():
            fix_proposals(model, args.fixed_proposals)
    times: Dict[str, List[Tuple[float, float]]] = {"sact": [], "dense": []}
    with EventStorage(0):
        for i in range(args.warmup + args.iters):
            order = ["sact", "dense"] if i % 2 == 0 else ["dense", "sact"]
            for name in order:
                t = step(*models[name], batches[i % len(batches)])
                if i >= args.warmup:
                    times[name].append(t)
        memory = {name: saved_activation_bytes(models[name][0], batches[0]) / 2 ** 20 for name in models}
    res: Dict[str, object] = {"saved_mib": memory, "memory_ratio": memory["sact"] / memory["dense"],
                              "image_size": list(batches[0][0]["image"].shape[-2:]), "batch": len(batches[0])}
    for name, t in times.items():
        wall, cpu = [x[0] for x in t], [x[1] for x in t]
        res[name] = {"median_s": statistics.median(wall), "mean_s": statistics.mean(wall), "n": len(t),
                     "cpu_median_s": statistics.median(cpu), "cpu_mean_s": statistics.mean(cpu)}
    res["ratio_median"] = res["sact"]["median_s"] / res["dense"]["median_s"]
    res["ratio_mean"] = res["sact"]["mean_s"] / res["dense"]["mean_s"]
    res["cpu_ratio_median"] = res["sact"]["cpu_median_s"] / res["dense"]["cpu_median_s"]
    res["config"] = args.config_file
    res["fixed_proposals"] = args.fixed_proposals
    res["threads"] = torch.get_num_threads()
    res["load_avg"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return res


def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    try:
        res = run(args)
    except ConfigError as e:
        sys.exit(f"benchmark_train.py: error: {e}")
    fixed = f", box heads on the same {args.fixed_proposals} proposals per image" if args.fixed_proposals else ""
    print(f"training iteration time ({res['sact']['n']} timed iterations each, interleaved, "
          f"{res['threads']} threads{fixed}, {benchmark_env.describe()}, load average {res['load_avg']}):")
    for name in ("sact", "dense"):
        r = res[name]
        print(f"  {name:5s}: wall median {r['median_s']:.3f} s, mean {r['mean_s']:.3f} s;"
              f"  CPU median {r['cpu_median_s']:.3f} s")
    print(f"  ratio SACT / dense: {res['ratio_median']:.3f}x (wall median), {res['ratio_mean']:.3f}x (wall mean), "
          f"{res['cpu_ratio_median']:.3f}x (CPU median)")
    mem = res["saved_mib"]
    print(f"activation memory (tensors saved for backward by one training forward, batch {res['batch']} at "
          f"{res['image_size'][0]}x{res['image_size'][1]}): sact {mem['sact']:.1f} MiB, dense {mem['dense']:.1f} MiB, "
          f"ratio {res['memory_ratio']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
