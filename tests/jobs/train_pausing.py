"""Test job (submitted by tests/test_ray_jobs.py): ray_jobs/train.py's training, with an
``on_checkpoint`` callback that holds every worker for PAUSE_S seconds after the step-2 checkpoint, so
the test can SIGKILL a worker at a known point instead of racing a run that may have finished. After
the restart the run resumes from step 2 and never saves step 2 again, so it does not pause twice.

    python tests/jobs/train_pausing.py PAUSE_S --config C [ray_jobs/train.py arguments ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the uploaded working dir


def main(argv: list[str]) -> int:
    from magdi_dist.config import load_config, with_durable_outputs
    from magdi_dist.launch.ray_train import train_on_ray

    pause_s, args = float(argv[0]), argv[1:]
    config = args[args.index("--config") + 1]
    workers = int(args[args.index("--workers") + 1])
    overrides = [a for a in args if "=" in a and not a.startswith("--")]

    def pause_after_step_2(path, state) -> None:
        if state["step"] == 2:
            print(f"[test] checkpoint {path} complete; pausing {pause_s}s", flush=True)
            time.sleep(pause_s)

    storage = args[args.index("--storage") + 1] if "--storage" in args else None
    cfg = with_durable_outputs(load_config(config, overrides), storage)
    summary = train_on_ray(cfg, num_workers=workers, on_checkpoint=pause_after_step_2)
    return 0 if summary.get("step") == summary.get("total_steps") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
