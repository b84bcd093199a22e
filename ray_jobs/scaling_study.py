"""Ray job entrypoint: a whole scaling study (every cell trained with Ray Train + DeepSpeed, evaluated,
logged to MLflow and registered; the champion gets its alias).

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/scaling_study.py \\
        --config configs/study_tiny.yaml --storage /shared/magdi

Inside a submitted job ``RAY_ADDRESS`` is set, so every cell trains on the submitting cluster. A cell
that fails is recorded as FAILED and the others go on; submitting the same study again skips every
cell that already finished.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# ``python ray_jobs/scaling_study.py`` puts ray_jobs/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/scaling_study.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="Study YAML.")
    parser.add_argument("--storage", default=None, help="Root for a relative output_dir (default: $MAGDI_STORAGE).")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the study file")
    args = parser.parse_args(argv)

    from magdi_dist.config import or_exit
    from magdi_dist.recipes.study import run_study
    from magdi_dist.study.config import load_study
    from magdi_dist.study.report import format_summary

    study = or_exit(load_study, args.config, args.overrides, args.storage)
    print(f"outputs: {study.output_dir}", flush=True)
    summary = run_study(study)
    print(format_summary(summary))
    print(json.dumps({"study": summary["study"], "status": summary["status"], "champion": summary["champion"]}))
    return 0 if summary["status"] == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
