"""Ray job entrypoint for generating teacher discussions: the ``magdi-dist debate`` command, run inside
a cluster.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- \\
        python ray_jobs/debate.py --config configs/debate_gsm8k.yaml --storage /shared/magdi workers=8

A job's driver already runs in the cluster (``RAY_ADDRESS`` is set by Ray), so unless the arguments
name an address this script joins that cluster: the worker actors and the endpoint gates run there,
the driver writes the turn log and the MAGs. Relative output paths resolve against ``--storage`` /
``MAGDI_STORAGE`` (Ray deletes the working-dir copy a job runs in). API keys reach the job as
environment variables (``magdi-dist submit --env OPENAI_API_KEY=...``); the config only names them.
Every other option is the CLI's (``--help``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# ``python ray_jobs/debate.py`` puts ray_jobs/ on sys.path, not the repository: add it, so the job
# runs from a plain working-dir upload without an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> None:
    from magdi_dist.cli import app

    args = list(argv)
    if not any(a == "--address" or a.startswith("--address=") for a in args):
        args += ["--address", os.environ.get("RAY_ADDRESS", "auto")]
    app(["debate", *args], prog_name="ray_jobs/debate.py")


if __name__ == "__main__":
    main(sys.argv[1:])
