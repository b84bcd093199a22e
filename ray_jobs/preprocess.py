"""Ray job entrypoint: a config's teacher data -> Parquet shards + manifest.json (magdi_dist.preprocess).

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/preprocess.py --config configs/tiny.yaml

The job's driver joins the cluster it was submitted to (Ray sets ``RAY_ADDRESS``); the Ray Data
pipeline then runs its parse tasks and feature actors there. Idempotent: inputs already turned into
shards with the same settings, tokenizer and model are skipped, and the job says so.
Input paths resolve in the job's working dir (uploaded with it) or are absolute; relative output paths
(``train.output_dir``, ``preprocess.out_dir``) resolve against ``--storage`` / ``$MAGDI_STORAGE``, storage
the cluster sees, never inside Ray's temporary copy of the working dir.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# ``python ray_jobs/preprocess.py`` puts ray_jobs/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/preprocess.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="Run config YAML (the one train uses).")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else local).")
    parser.add_argument("--storage", default=None, help="Root for relative output paths (default: $MAGDI_STORAGE).")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)

    from magdi_dist.config import load_config, or_exit, with_durable_outputs
    from magdi_dist.launch.stage import prepare

    cfg = or_exit(lambda: with_durable_outputs(load_config(args.config, args.overrides), args.storage))
    _, where = or_exit(lambda: prepare(cfg, engine="ray", address=args.address))
    print(f"manifest: {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
