"""``python -m magdi_dist.train --config FILE [key=value ...]``: the per-rank entry point that torchrun,
the deepspeed launcher (``deepspeed --no_local_rank -m ...`` or with its ``--local_rank=N`` argument,
which is accepted and ignored: LOCAL_RANK comes from the environment) and ``magdi-dist train
--nproc-per-node N`` start on every rank."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from magdi_dist.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m magdi_dist.train")
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from magdi_dist.train.loop import train

    train(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
