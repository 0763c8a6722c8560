"""Distributed training where detectron2 lacks the CPU case, decided by reading detectron2.

- launch: detectron2 0.6's `_distributed_worker` asserts CUDA and hard-codes NCCL; detectron2 main
  falls back to gloo itself. `sact_det.compat.launch` is detectron2's `launch` unless that
  detection says it is GPU-only and CUDA is unavailable: then it starts CPU processes joined with
  gloo (same signature, same dist_url semantics as detectron2 main).
- create_ddp_model: detectron2 (0.6 and main) passes `device_ids=[local rank]` to
  DistributedDataParallel even for a CPU model, which DDP rejects. Detected by calling detectron2's
  own function with a stand-in DDP and a 2-process `comm`; where it does, the function in
  `detectron2.engine.defaults` (used by DefaultTrainer) is wrapped to pass `device_ids=None` for
  CPU models and is otherwise detectron2's own (same defaults, e.g. broadcast_buffers).
"""
import ast
import functools
import logging
import os
import socket
import types
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from . import _source
from ._hooks import when_imported
from ._registry import Patch, record

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
LAUNCH = "detectron2.engine.launch"
DEFAULTS = "detectron2.engine.defaults"


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` now (it may be taken again before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- launch
def launch_gpu_only() -> Optional[str]:
    """Why detectron2's launch cannot start CPU processes (from its source), or None if it can."""
    tree = _source.module_tree(LAUNCH)
    worker = _source.top_level_function(tree, "_distributed_worker") if tree else None
    if worker is None:
        return None
    reasons = []
    for node in ast.walk(worker):
        if (isinstance(node, ast.Assert) and isinstance(node.test, ast.Call)
                and _source.dotted(node.test.func) == "torch.cuda.is_available"):
            reasons.append("asserts torch.cuda.is_available()")
        if isinstance(node, ast.Call) and _source.dotted(node.func).endswith("init_process_group"):
            for kw in node.keywords:
                if kw.arg == "backend" and isinstance(kw.value, ast.Constant):
                    reasons.append(f"hard-codes backend={kw.value.value!r}")
    return f"{LAUNCH}._distributed_worker " + " and ".join(reasons) if reasons else None


_LAUNCH_GPU_ONLY: Optional[str] = None


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = "auto",
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """detectron2's `launch` (`detectron2.engine.launch`), also without CUDA.

    One process per GPU (NCCL) with CUDA, as detectron2 does. Without CUDA, detectron2 main starts
    `num_gpus_per_machine` CPU processes joined with gloo; where detectron2's launch is GPU-only
    (0.6) this function does the same itself. `dist_url` is passed on as detectron2 reads it:
    "auto" (this function's default, for one machine) picks a free loopback port, None means
    env:// (MASTER_ADDR / MASTER_PORT). `main_func(*args)` runs in every process and must be
    picklable (a module-level function).
    """
    if _LAUNCH_GPU_ONLY is None or torch.cuda.is_available():
        from detectron2.engine import launch as d2_launch

        d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url,
                  args=tuple(args), timeout=timeout)
        return
    if num_gpus_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"launch: need num_gpus_per_machine >= 1, num_machines >= 1 and 0 <= machine_rank < "
            f"num_machines; got {num_gpus_per_machine}, {num_machines}, {machine_rank}"
        )
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("launch: dist_url='auto' only works on one machine; pass the "
                             "address of machine 0, e.g. tcp://10.0.0.1:29500")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    logger.info("CUDA unavailable: launching %d CPU processes (gloo) at %s",
                num_gpus_per_machine, dist_url)
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args),
              timeout),
        daemon=False,
        start_method="spawn",
    )


def _setup_local_process_group(num_per_machine: int, machine_rank: int) -> None:
    """detectron2.utils.comm's local group (ranks on this machine), as _distributed_worker does."""
    from detectron2.utils import comm

    if hasattr(comm, "create_local_process_group"):  # newer detectron2 has the helper
        comm.create_local_process_group(num_per_machine)
        return
    assert comm._LOCAL_PROCESS_GROUP is None, "local process group already set"
    num_machines = dist.get_world_size() // num_per_machine
    for i in range(num_machines):  # every rank must create every group
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_per_machine: int,
    machine_rank: int,
    dist_url: Optional[str],
    args: Sequence[Any],
    timeout: timedelta,
) -> None:
    from detectron2.utils import comm

    rank = machine_rank * num_per_machine + local_rank
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
    try:
        dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                                rank=rank, timeout=timeout)
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    try:
        _setup_local_process_group(num_per_machine, machine_rank)
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- create_ddp_model
def passes_device_ids_for_cpu_model(fn: Callable[..., Any]) -> Optional[bool]:
    """Call detectron2's create_ddp_model on a CPU model with a stand-in DDP and a 2-process comm.

    True if it passes device_ids (DDP rejects them for CPU models), False if not, None if the
    probe is impossible (the function no longer uses the module globals `comm` and
    `DistributedDataParallel`).
    """
    g = getattr(fn, "__globals__", {})
    if "DistributedDataParallel" not in g or "comm" not in g:
        return None
    seen: dict = {}

    class _StandInDDP:
        def __init__(self, module: nn.Module, *a: Any, **kwargs: Any) -> None:
            seen.update(kwargs, called=True)

        def register_comm_hook(self, *a: Any, **k: Any) -> None:
            pass

    comm = types.SimpleNamespace(get_world_size=lambda: 2, get_local_rank=lambda: 0,
                                 get_rank=lambda: 0, get_local_size=lambda: 2)
    saved = g["DistributedDataParallel"], g["comm"]
    g["DistributedDataParallel"], g["comm"] = _StandInDDP, comm
    try:
        fn(nn.Linear(1, 1))
    except Exception:  # noqa: BLE001
        return None
    finally:
        g["DistributedDataParallel"], g["comm"] = saved
    if not seen.get("called"):
        return None
    return seen.get("device_ids") is not None


def _on_cuda(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.is_cuda


def cpu_aware(original: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """detectron2's `original` create_ddp_model, with device_ids=None for a CPU model."""

    @functools.wraps(original)
    def create_ddp_model(model: nn.Module, **kwargs: Any) -> nn.Module:
        if "device_ids" not in kwargs and not _on_cuda(model):
            kwargs["device_ids"] = None  # DDP's value for CPU modules
        return original(model, **kwargs)

    return create_ddp_model


def _patch_create_ddp_model(module: types.ModuleType) -> None:
    original = getattr(module, "create_ddp_model", None)
    if original is None or hasattr(original, "__wrapped__"):
        return
    if passes_device_ids_for_cpu_model(original):
        module.create_ddp_model = cpu_aware(original)
        record(Patch(
            "create_ddp_model_cpu",
            f"{DEFAULTS}.create_ddp_model",
            "it passes device_ids=[local rank] for a CPU model (probed with a stand-in DDP), "
            "which DistributedDataParallel rejects",
            "wrapped: device_ids=None when the model is on CPU and the caller gave none; "
            "otherwise detectron2's function with its own defaults",
        ))


def create_ddp_model(model: nn.Module, **kwargs: Any) -> nn.Module:
    """`detectron2.engine.defaults.create_ddp_model` (wrapped by compat where it needs it).

    Returns `model` itself for a single process; kwargs go to detectron2's function (e.g.
    fp16_compression) and on to DistributedDataParallel, with detectron2's defaults.
    """
    from detectron2.engine import defaults

    return defaults.create_ddp_model(model, **kwargs)


def apply() -> list:
    """Decide the launch fallback now; the create_ddp_model probe runs when detectron2 imports
    `detectron2.engine.defaults` (compat.status() imports it to report)."""
    global _LAUNCH_GPU_ONLY
    _LAUNCH_GPU_ONLY = launch_gpu_only()
    patches = []
    if _LAUNCH_GPU_ONLY:
        patches.append(Patch(
            "launch_cpu",
            "sact_det.compat.launch (detectron2's launch is not modified)",
            _LAUNCH_GPU_ONLY,
            "without CUDA, CPU processes joined with gloo; with CUDA, detectron2's launch",
        ))
        record(patches[-1])
    when_imported(DEFAULTS, after=_patch_create_ddp_model)
    return patches
