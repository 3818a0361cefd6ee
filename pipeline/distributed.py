"""torchrun support: `torchrun --nproc_per_node N -m pipeline run ...`.

Rank 0 runs every stage; the distill stage runs on all ranks with DistributedDataParallel: nccl when
every rank has a GPU of its own, else gloo (on CPU, or with more ranks than GPUs, which NCCL refuses). The other ranks wait for rank 0 to reach distill, take part in it, and exit.
Without torchrun's environment every function here is a no-op for a single process.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def active() -> bool:
    return world_size() > 1


def init() -> None:
    if active() and not dist.is_initialized():
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % gpus)
        backend = "nccl" if gpus >= int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) else "gloo"
        dist.init_process_group(backend, timeout=timedelta(hours=2))
        # Share the cores between the processes instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size()))


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj):
    """Rank 0's value of `obj`, on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
