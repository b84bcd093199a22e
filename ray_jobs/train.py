"""Ray job entrypoint: preprocess what is missing, then train with Ray Train + DeepSpeed (magdi_dist.launch).

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/train.py --config configs/tiny.yaml \\
        --workers 2 --storage /shared/magdi

``--workers`` Ray Train workers (GPU ones when the cluster has GPUs) each run one DeepSpeed rank; a
worker that dies is replaced up to ``--max-failures`` times and training resumes from the newest
complete checkpoint in ``train.output_dir/checkpoints``. A relative ``train.output_dir`` resolves
against ``--storage`` / ``$MAGDI_STORAGE`` (storage every node sees), never inside Ray's temporary copy
of the working dir; the job prints where its outputs are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# ``python ray_jobs/train.py`` puts ray_jobs/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/train.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="Run config YAML (the one preprocess uses).")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (DeepSpeed ranks).")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="One GPU per worker (default: when the cluster has GPUs).")
    parser.add_argument("--max-failures", type=int, default=3, help="Worker failures to recover from.")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="Resume from the newest complete checkpoint (--no-resume deletes them).")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else local).")
    parser.add_argument("--storage", default=None, help="Root for relative output paths (default: $MAGDI_STORAGE).")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)

    from magdi_dist.config import ConfigError
    from magdi_dist.launch.lock import RunLocked
    from magdi_dist.recipes.train import run
    from magdi_dist.train.checkpoint import CheckpointMismatch

    try:
        return run(args.config, args.overrides, storage=args.storage, resume=args.resume, ray_workers=args.workers,
                   use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures,
                   address=args.address)
    except (ConfigError, CheckpointMismatch, RunLocked) as err:  # before any worker started
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
