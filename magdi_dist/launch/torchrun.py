"""torchrun as a launcher: the command that starts ``nproc`` local ranks, each running
``python -m magdi_dist.launch.rank --run-file RUN.json`` on the run the driver resolved and published."""

from __future__ import annotations

import sys
from pathlib import Path


def torchrun_command(run_file: str | Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "magdi_dist.launch.rank", "--run-file", str(run_file)]
