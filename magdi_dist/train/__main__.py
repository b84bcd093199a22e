"""``python -m magdi_dist.train --config FILE [key=value ...]``: the per-rank entry point.

Launchers that work on CPU (checked with deepspeed 0.19.8, torch 2.13):
* ``torchrun --standalone --nproc_per_node 2 -m magdi_dist.train --config ...``
  (this is what ``magdi-dist train --nproc-per-node 2`` runs after validating the config);
* ``deepspeed --num_gpus 2 --module magdi_dist.train --config ...`` with DS_ACCELERATOR=cpu (or no GPU):
  on CPU ``--num_gpus`` means local ranks; the ``--local_rank=N`` it appends is accepted and ignored
  (LOCAL_RANK comes from the environment). It sets LOCAL_SIZE, not LOCAL_WORLD_SIZE; dist.py maps it.
  ``--bind_cores_to_rank`` wraps every rank in ``numactl``, which must be installed (it is not on the
  2-core CI box, where the flag fails); without it our thread default (cores / local ranks) applies.
  ``--num_nodes N`` with a hostfile is untested here (one machine); the code reads only the env vars
  the launcher sets, and checkpoints then need an output_dir shared by all nodes.
* plain ``python -m magdi_dist.train`` (one rank, no env vars needed).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from magdi_dist.config import load_config, or_exit

    parser = argparse.ArgumentParser(prog="python -m magdi_dist.train")
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    args = parser.parse_args(argv)
    cfg = or_exit(load_config, args.config, args.overrides)
    from magdi_dist.train.loop import train

    train(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
