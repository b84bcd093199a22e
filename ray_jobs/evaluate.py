"""Ray job entrypoint for evaluation: the ``magdi-dist evaluate`` command, run inside a cluster.

    ray job submit --working-dir . -- python ray_jobs/evaluate.py \\
        --model models:/magdi-student@champion --data test.jsonl --workers 8 --out /shared/eval

A job's driver already runs in the cluster (``RAY_ADDRESS`` is set by Ray), so unless the arguments
name an address this script joins that cluster instead of starting a private local Ray; questions are
then sharded over ``--workers`` actors there. Every other option is the CLI's (``--help``).
Paths (model directory, data, output) must be visible to the driver; workers load a local model
directory when they can see it and otherwise download the ``models:/`` URI themselves.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# ``python ray_jobs/evaluate.py`` puts ray_jobs/ on sys.path, not the repository: add it, so the job
# runs from a plain working-dir upload without an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> None:
    from magdi_dist.cli import app

    args = list(argv)
    if not any(a == "--ray-address" or a.startswith("--ray-address=") for a in args):
        args += ["--ray-address", os.environ.get("RAY_ADDRESS", "auto")]
    app(["evaluate", *args], prog_name="ray_jobs/evaluate.py")


if __name__ == "__main__":
    main(sys.argv[1:])
