"""torchrun as a launcher: the command that starts ``nproc`` local ranks, each running
``python -m magdi_dist.launch.rank`` (the train recipe prepares the data before it spawns them)."""

from __future__ import annotations

import sys
from pathlib import Path


def torchrun_command(config: str | Path, overrides: list[str], resume: bool, nproc: int,
                     storage: str | None = None) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "magdi_dist.launch.rank", "--config", str(config), "--resume" if resume else "--no-resume",
        *(["--storage", storage] if storage else []), *overrides,
    ]
