"""Work shared by several processes: the process group ``accelerate launch`` or ``torchrun`` starts.

A verb that supports it calls ``join_process_group`` first: with ``WORLD_SIZE`` > 1 in the
environment (what both launchers set) the process joins the group (gloo on a CPU, NCCL where CUDA
is), otherwise nothing happens and every helper below is the one-process identity. Each rank
works on its ``shard`` of the items; sums are combined with ``all_reduce_sum``; only the main
process writes, after a ``barrier``. No engine of our own: torch.distributed does the talking.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from .storage import UniEraseError


def join_process_group() -> bool:
    """Join the launcher's process group if there is one; whether this run has several processes."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_world_size() > 1


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_size()[0] == 0


def shard(items: list) -> list:
    """This rank's share of ``items``: every size-th one from its rank (sorted work stays balanced)."""
    rank, size = rank_and_size()
    return list(items[rank::size])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over all processes (in place, and returned). NCCL needs
    the tensor on this rank's GPU: it is moved there and back."""
    rank, size = rank_and_size()
    if size == 1:
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to(f"cuda:{torch.cuda.current_device()}")
        dist.all_reduce(moved)
        tensor.copy_(moved.to(tensor.device))
    else:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_count(count: int) -> int:
    return int(all_reduce_sum(torch.tensor([count], dtype=torch.float64))[0].item())


def barrier() -> None:
    if rank_and_size()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def shared_step(what: str):
    """Work every process does together (``what``: "training", …): when another process fails or is
    killed, this one's collective fails; the error then says which process stopped, during what, and
    that nothing was written (the first process writes only after every one has come through)."""
    rank, size = rank_and_size()
    try:
        yield
    except RuntimeError as err:  # torch.distributed's errors (gloo/NCCL) are RuntimeErrors
        if size == 1 or isinstance(err, UniEraseError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UniEraseError(f"process {rank} of {size} stopped while {what}: another process failed or was killed "
                            f"({first}); nothing was written") from None


def everyone_done(what: str) -> None:
    """Every process has come through ``what`` (the first process writes only after this)."""
    with shared_step(f"waiting for every process to finish {what}"):
        barrier()
