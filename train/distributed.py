"""Training in several processes: `make train NPROC=N` runs the same stage under torchrun, DDP with one process per
device (one per GPU; on a CPU, processes that share the machine's cores and memory, on gloo).

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; the stage joins the process group first (so that rank 0 can clear
checkpoints and the others wait), the trainer (accelerate) finds it joined and wraps the model in DDP. Every rank
reads and tokenizes the same rows, the sampler gives each its share of every global batch (per-device batch x N
x grad_accum), gradients are averaged. Only rank 0 prints, writes the log, the plots, the adapter and the summary;
checkpoints are the trainer's (weights and optimizer from rank 0, one RNG state per rank), marked complete when
every rank has written its part. A rank killed mid-run stops the others (torchrun); the rerun resumes from the
last complete checkpoint, with the same N (the fingerprint holds it).
"""

from __future__ import annotations

import contextlib
import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine (they share its memory on a CPU)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join torchrun's process group (nccl on GPUs, each rank on its own device; gloo on a CPU); nothing alone."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    import torch.distributed as dist

    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


def total(n: float) -> float:
    """The sum of `n` over every rank (n itself alone)."""
    if world_size() == 1:
        return n
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(n)], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t)
    return float(t.item())


@contextlib.contextmanager
def only_main_prints():
    """stdout of the ranks other than 0 goes nowhere (their errors still reach stderr)."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
