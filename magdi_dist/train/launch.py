"""``magdi-dist train``: validate in this process, then train here or spawn local ranks with torchrun.

Validation (config keys and values, data file, ZeRO stage, resume compatibility) runs *before* any
worker starts, so a typo costs a second, not a cluster start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def validate(config: Path | None, overrides: list[str], resume: bool, world_size: int):
    """The config, or a ConfigError / CheckpointMismatch naming what is wrong."""
    from magdi_dist.config import config_hash, load_config
    from magdi_dist.train.checkpoint import check_resumable
    from magdi_dist.train.engine import build_ds_config

    cfg = load_config(config, overrides)
    # Fill the DeepSpeed preset now: a custom JSON with an unfillable "auto" or a bad stage fails here.
    build_ds_config(cfg, world_size, "cpu")
    if resume:
        check_resumable(cfg.train.output_dir, config_hash(cfg), world_size)
    return cfg


def torchrun_command(config: Path, overrides: list[str], resume: bool, nproc: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "magdi_dist.train", "--config", str(config), "--resume" if resume else "--no-resume",
        *overrides,
    ]


def run(config: Path, overrides: list[str], resume: bool, nproc_per_node: int) -> int:
    from magdi_dist.config import ConfigError
    from magdi_dist.train.checkpoint import CheckpointMismatch

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # already one rank of torchrun / deepspeed / Ray
    world = int(os.environ["WORLD_SIZE"]) if launched else nproc_per_node
    try:
        cfg = validate(config, overrides, resume, world)
    except (ConfigError, CheckpointMismatch) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if nproc_per_node > 1 and not launched:
        return subprocess.call(torchrun_command(config, overrides, resume, nproc_per_node))
    from magdi_dist.train.loop import train

    train(cfg, resume=resume)
    return 0
