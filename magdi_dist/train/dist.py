"""Process-group setup that works the same under plain ``python``, ``torchrun``, the ``deepspeed``
launcher and Ray Train: all of them (or our defaults) speak the torch.distributed env-var protocol
(RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT), so that is the only thing we read.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


def free_port() -> int:
    """A port the OS says is free right now (bind to 0). A race with another process is possible but
    harmless for the single-process default, where nobody else connects to it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_env_defaults() -> None:
    """Fill the env vars a single-process run lacks, so ``python -m ...`` needs no MPI and no launcher.

    Only missing keys are set: a launcher's values always win.
    """
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # torchrun and Ray set LOCAL_WORLD_SIZE; the deepspeed launcher sets LOCAL_SIZE instead.
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", os.environ["WORLD_SIZE"]))
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def select_accelerator() -> str:
    """Pin DeepSpeed's accelerator before deepspeed is imported (it caches its choice at import).

    Without a GPU, DeepSpeed's auto-detection may still pick CUDA when e.g. a CUDA build of torch is
    installed; ``DS_ACCELERATOR=cpu`` makes the choice explicit. A user-set value is kept.
    """
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cuda" if cuda_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    accelerator: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self):
        import torch

        return torch.device(f"cuda:{self.local_rank}" if self.accelerator == "cuda" else "cpu")


def skip_shm_comm_build() -> None:
    """Stop DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce op.

    ``deepspeed.comm`` builds ``deepspeed_shm_comm`` (C++, ninja) inside ``init_distributed`` on the
    CPU accelerator, but only ``inference_all_reduce`` (tensor-parallel inference kernels) ever calls
    it; training all-reduces go through torch.distributed (gloo) whatever happens here. The build
    costs 40-200 s on a 2-core machine in every fresh environment, blocks every rank on a lock file
    (left behind, it hangs the next run), and the shared ``~/.cache/torch_extensions`` copy is rebuilt
    whenever another virtual environment built it last. DeepSpeed checks this table before building
    and falls back to torch.distributed when the op is marked incompatible, exactly as on non-Linux
    platforms; ``MAGDI_DS_SHM_COMM=1`` keeps the build for anyone who runs DeepSpeed inference here.
    """
    if os.environ.get("MAGDI_DS_SHM_COMM") == "1":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed() -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU); idempotent.

    On CPU each rank gets ``cores // local ranks`` intra-op threads unless OMP_NUM_THREADS is set
    (torchrun sets it to 1): two ranks each using every core would only thrash.
    """
    set_env_defaults()
    accelerator = select_accelerator()
    import deepspeed
    import torch
    import torch.distributed as dist

    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    if accelerator == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if accelerator == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        skip_shm_comm_build()
    # Called even when torch.distributed is up already (Ray Train sets its process group up before
    # the loop runs): DeepSpeed then only wraps that group, and without the wrap deepspeed.comm reports
    # itself uninitialised, so zero.Init's config (built before deepspeed.initialize, which would wrap
    # it) takes the world size for 1 and refuses the batch of a ZeRO-3 run on several ranks.
    # auto_mpi_discovery off: the env vars are always set (above), and mpi4py probing only costs.
    deepspeed.init_distributed(dist_backend="nccl" if accelerator == "cuda" else "gloo", auto_mpi_discovery=False)
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ["LOCAL_RANK"]),
        local_world_size=local_world,
        accelerator=accelerator,
    )


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
