"""Multi-process training under torchrun or accelerate launch; every function is a no-op in one process.

Each process takes its slice of every global batch. Caption and image features are gathered with gradients,
so each process computes the contrastive losses over the global batch, and gradients are averaged across
processes: the update equals that of one process over the same global batch, up to float error.

torchrun and `accelerate launch --multi_gpu` (which starts torchrun, also on a machine without GPUs) set RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. mpirun sets its own rank variables instead; `accelerate
launch --cpu` uses mpirun for several processes, and without --mpirun_hostfile starts one process only.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# (rank, world size, local rank) variables of each launcher: torchrun, Open MPI, then MPICH and Intel MPI.
LAUNCHER_VARIABLES = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)


@dataclass
class LaunchInfo:
    """This process's place among the processes a launcher started."""

    rank: int
    world_size: int
    local_rank: int


def launch_info() -> LaunchInfo:
    """Read rank, world size and local rank from the launcher's environment variables (one process when unset)."""
    for rank_variable, size_variable, local_variable in LAUNCHER_VARIABLES:
        if size_variable in os.environ:
            return LaunchInfo(
                int(os.environ.get(rank_variable, "0")),
                int(os.environ[size_variable]),
                int(os.environ.get(local_variable, "0")),
            )
    return LaunchInfo(0, 1, 0)


def setup() -> bool:
    """Join the process group that the launcher describes; return True when there is more than one process.

    The backend is NCCL when CUDA is available and gloo otherwise. NEGCLIP_BACKEND=gloo forces gloo.
    """
    if is_distributed():
        return True
    info = launch_info()
    if info.world_size <= 1:
        return False
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} missing, so process {info.rank} of {info.world_size} cannot reach the others. "
            "Start training with torchrun --nproc_per_node N or accelerate launch --multi_gpu --num_processes N"
        )
    use_nccl = torch.cuda.is_available() and os.environ.get("NEGCLIP_BACKEND") != "gloo"
    if use_nccl:
        torch.cuda.set_device(info.local_rank)  # NCCL runs each process's collectives on its current GPU
    backend = "nccl" if use_nccl else "gloo"
    dist.init_process_group(
        backend=backend, rank=info.rank, world_size=info.world_size, timeout=datetime.timedelta(minutes=30)
    )
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
    """Return the device of this process: its local rank's GPU when CUDA is used, else the CPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", launch_info().local_rank)
    return torch.device("cpu" if name == "auto" else name)


def check_batch_size(batch_size: int) -> None:
    """Raise ValueError unless every process gets the same share of a global batch."""
    size = world_size()
    if batch_size % size:
        raise ValueError(
            f"batch size {batch_size} does not divide evenly over {size} processes; "
            f"pick a batch size that is a multiple of {size}"
        )


def local_slice(global_batch: list[int]) -> list[int]:
    """Return this process's contiguous share of a global batch (its size must divide evenly)."""
    check_batch_size(len(global_batch))
    share = len(global_batch) // world_size()
    return global_batch[rank() * share : (rank() + 1) * share]


class _GatherWithGradients(torch.autograd.Function):
    """all_gather whose backward pass returns to each process the sum of every process's gradient for its rows.

    It does what torch.distributed.nn.functional.all_gather does, which PyTorch 2.13 deprecates. The backward
    pass uses all_reduce, which both gloo and NCCL support, and every process must hold the same number of rows.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(features) for _ in range(world_size())]
        dist.all_gather(parts, features.contiguous())
        ctx.rows = features.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        summed = gradient.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        start = rank() * ctx.rows
        return summed[start : start + ctx.rows]


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's (local_batch, dim) features in rank order, keeping gradients for all.

    The backward pass of the gather sums, on each process, the gradients that every process's loss sends to this
    process's features.
    """
    if not is_distributed():
        return features
    return _GatherWithGradients.apply(features)


def gather_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: gather_features(value) for key, value in batch.items()}


def map_shards(items: list, function: Callable[[list], torch.Tensor]) -> torch.Tensor:
    """Apply `function` to this process's share of `items` and return all processes' results in item order.

    `function` maps a list to a tensor with one row per item. Each process gets a contiguous share of at most
    ceil(len(items) / world size) items, and the last ones may get none.
    """
    if not is_distributed():
        return function(items)
    size = world_size()
    share = -(-len(items) // size)
    counts = [len(items[index * share : (index + 1) * share]) for index in range(size)]
    rows = function(items[rank() * share : (rank() + 1) * share])
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((share, *rows.shape[1:]), dtype=rows.dtype, device=device)  # all_gather needs equal sizes
    padded[: len(rows)] = rows
    gathered = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts)]).to(rows.device)


def broadcast_trainable(model: torch.nn.Module) -> None:
    """Copy rank 0's trainable parameters to every process, so all start from the same weights.

    LoRA initialises its matrices from the random generator, which work done on rank 0 alone (the evaluation
    before training) may have advanced. Frozen weights come from the same file on every process.
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                dist.broadcast(parameter.data, src=0)


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


def any_process(flag: bool) -> bool:
    """Return True on every process when `flag` is True on at least one, so that all of them stop together."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
