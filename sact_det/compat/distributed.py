"""Distributed training on GPUs (NCCL, detectron2's own launcher) and on CPUs (gloo).

detectron2 0.6's `launch()` asserts CUDA and uses NCCL, and its `create_ddp_model` always passes
`device_ids`, which DistributedDataParallel rejects for CPU models. `launch` and `create_ddp_model`
here keep detectron2's signatures and behaviour on GPUs and add the CPU case.
"""
import logging
import os
import socket
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ._hooks import when_imported

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` now (it may be taken again before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _resolve_dist_url(dist_url: Optional[str], num_machines: int) -> str:
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError(
                f"launch: dist_url={dist_url!r} only works on one machine (num_machines="
                f"{num_machines}); pass the address of machine 0, e.g. tcp://10.0.0.1:29500"
            )
        return f"tcp://127.0.0.1:{find_free_port()}"
    return dist_url


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """detectron2's `launch` that also runs without CUDA.

    With CUDA, this is `detectron2.engine.launch` (one process per GPU, NCCL). Without CUDA,
    `num_gpus_per_machine` CPU processes are spawned per machine and joined with gloo. `dist_url`
    None or "auto" picks a free loopback port (single machine). `main_func(*args)` runs in every
    process; it must be picklable (a module-level function).
    """
    if num_gpus_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"launch: need num_gpus_per_machine >= 1, num_machines >= 1 and 0 <= machine_rank < "
            f"num_machines; got {num_gpus_per_machine}, {num_machines}, {machine_rank}"
        )
    world_size = num_machines * num_gpus_per_machine
    if world_size > 1:
        dist_url = _resolve_dist_url(dist_url, num_machines)
    if torch.cuda.is_available():
        from detectron2.engine import launch as d2_launch

        d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url,
                  args=tuple(args), timeout=timeout)
        return
    if world_size == 1:
        main_func(*args)
        return
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

    if hasattr(comm, "create_local_process_group"):  # detectron2 > 0.6
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
    dist_url: str,
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


def create_ddp_model(
    model: nn.Module,
    *,
    fp16_compression: bool = False,
    broadcast_buffers: bool = False,
    find_unused_parameters: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """detectron2's `create_ddp_model` for CUDA and CPU models.

    Returns `model` itself for a single process. CUDA models get `device_ids=[local rank]` as in
    detectron2; CPU models get none. Other kwargs go to DistributedDataParallel.
    """
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    if comm.get_world_size() == 1:
        return model
    param = next(model.parameters(), None)
    if "device_ids" not in kwargs and param is not None and param.is_cuda:
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(model, broadcast_buffers=broadcast_buffers,
                                  find_unused_parameters=find_unused_parameters, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def _patch_engine_defaults(module: Any) -> None:
    # detectron2 0.6 create_ddp_model passes device_ids (fails for CPU models in DefaultTrainer).
    module.create_ddp_model = create_ddp_model


def apply() -> None:
    when_imported("detectron2.engine.defaults", after=_patch_engine_defaults)
