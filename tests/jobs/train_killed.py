"""Test job (run by tests/test_crash_resume.py under ``torchrun --max-restarts 1``): the per-rank entry
point ``magdi_dist.launch.rank``, with one rank SIGKILLing itself once at a chosen point, the way a
node dies under a cluster: no exception, no cleanup, its peers left blocked in a collective until the
launcher notices and restarts the whole group.

    KILL_AT=STEP:PHASE:RANK KILL_MARKER=FILE torchrun ... tests/jobs/train_killed.py --config C ...

PHASE ``step``: in optimizer step STEP, after its forward and before its backward (grad_accum 1).
PHASE ``save``: in the checkpoint save of step STEP, after DeepSpeed wrote this rank's shards and before
the RNG files and COMPLETE. KILL_MARKER is created just before the kill, so the restarted run (same
command line) does not kill again.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str]) -> int:
    from deepspeed.runtime.engine import DeepSpeedEngine

    from magdi_dist.launch import rank as rank_entry
    from magdi_dist.train.checkpoint import step_tag

    step, phase, who = os.environ["KILL_AT"].split(":")
    marker = Path(os.environ["KILL_MARKER"])
    me = int(os.environ["RANK"])

    def die() -> None:
        marker.write_text(f"{step}:{phase}:{who}\n")
        print(f"[test] rank {me}: SIGKILL in {phase} of step {step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    armed = me == int(who) and not marker.exists()
    backward, save_checkpoint = DeepSpeedEngine.backward, DeepSpeedEngine.save_checkpoint

    def backward_then_maybe_die(self, loss, *args, **kwargs):
        # global_steps counts optimizer steps (restored on resume); with grad_accum 1 this is mid-step.
        if armed and phase == "step" and self.global_steps + 1 == int(step):
            die()
        return backward(self, loss, *args, **kwargs)

    def save_then_maybe_die(self, save_dir, tag=None, *args, **kwargs):
        out = save_checkpoint(self, save_dir, tag, *args, **kwargs)
        if armed and phase == "save" and tag == step_tag(int(step)):
            die()
        return out

    DeepSpeedEngine.backward = backward_then_maybe_die
    DeepSpeedEngine.save_checkpoint = save_then_maybe_die
    return rank_entry.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
