"""Multi-process training under torchrun or accelerate launch; every function is a no-op in one process.

Each process takes its slice of every global batch. Caption and image features are gathered with gradients,
so each process computes the contrastive losses over the global batch, and gradients are averaged across
processes: the update equals that of one process over the same global batch, up to float error.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def setup() -> bool:
    """Join the process group described by torchrun's environment variables; return True when distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("NEGCLIP_BACKEND") != "gloo" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    logger.info("joined process group: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def device_for(name: str) -> torch.device:
    """Return the device of this process: its LOCAL_RANK's GPU when CUDA is used, else the CPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu" if name == "auto" else name)


def local_slice(global_batch: list[int]) -> list[int]:
    """This process's contiguous share of a global batch (its size must divide evenly)."""
    size = world_size()
    if len(global_batch) % size:
        raise ValueError(
            f"batch size {len(global_batch)} does not divide evenly over {size} processes; "
            f"pick a batch size that is a multiple of {size}"
        )
    share = len(global_batch) // size
    return global_batch[rank() * share : (rank() + 1) * share]


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's (local_batch, dim) features in rank order, keeping gradients for all."""
    if not is_distributed():
        return features
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(features.contiguous()), dim=0)


def gather_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: gather_features(value) for key, value in batch.items()}


def average_gradients(parameters) -> None:
    """Average gradients across processes after backward.

    Every process computes the same global loss and the differentiable gather sums each process's share of its
    gradient, so the average equals the single-process gradient over the global batch.
    """
    if not is_distributed():
        return
    size = world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(size)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
