"""Recipe: train one student.

    config (YAML + overrides) -> durable output paths -> pre-flight checks
      -> teacher files -> Parquet shards (prepare_data, once, on this driver)
      -> ranks read the shards and train (in this process, torchrun, or Ray Train)
      -> checkpoints, metrics.jsonl and the Hugging Face export under train.output_dir

``magdi-dist train`` and ``ray_jobs/train.py`` call ``run``; under torchrun or the deepspeed
launcher each rank runs ``magdi_dist.launch.rank`` instead (its rank 0 prepares).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from magdi_dist.config import MAGDiConfig, config_hash, load_config, with_durable_outputs


def load(config: str | Path | None, overrides: list[str], storage: str | None = None) -> MAGDiConfig:
    """The validated config, with relative output paths resolved against the storage root."""
    return with_durable_outputs(load_config(config, overrides), storage)


def preflight(cfg: MAGDiConfig, world_size: int, resume: bool, *, this_machine: bool = True) -> None:
    """What would fail after minutes fails now: the DeepSpeed preset must fill from this config, a
    resume must find checkpoints of the same config and world size (CheckpointMismatch otherwise),
    and a run on ``this_machine`` must fit its memory by the capacity plan (ConfigError naming the
    numbers and the presets that fit; ``train.skip_memory_check`` skips it). The plan builds the
    student on the meta device: no weights, about a second."""
    from magdi_dist.launch.plan import check_fits
    from magdi_dist.train.checkpoint import check_resumable
    from magdi_dist.train.engine import build_ds_config

    build_ds_config(cfg, world_size, "cpu")
    if resume:
        check_resumable(cfg.train.output_dir, config_hash(cfg), world_size)
    if this_machine and not cfg.train.skip_memory_check:
        check_fits(cfg, world_size)


def run(config: str | Path, overrides: list[str], *, storage: str | None = None, resume: bool = True,
        nproc_per_node: int = 1, ray_workers: int = 0, ray_preprocess: bool = False, **ray_options) -> int:
    """Train with ``nproc_per_node`` local ranks, or ``ray_workers`` Ray Train workers; exit code."""
    from magdi_dist.launch.torchrun import torchrun_command
    from magdi_dist.preprocess.prepare import prepare_data

    # 1. The config, and where its outputs go.
    cfg = load(config, overrides, storage)
    world = ray_workers or nproc_per_node
    # Ray workers run on the cluster's devices, not this driver's: plan those with `magdi-dist plan`.
    preflight(cfg, world, resume, this_machine=not ray_workers)
    print(f"outputs: {cfg.train.output_dir}", flush=True)

    # 2. Ray Train: the launcher prepares the data on the cluster, then starts its workers.
    if ray_workers:
        from magdi_dist.launch.ray_train import train_on_ray

        summary = train_on_ray(cfg, num_workers=ray_workers, resume=resume, **ray_options)
        return 0 if summary.get("step") == summary.get("total_steps") else 1

    # 3. Local ranks: the data is prepared once, here; the ranks only read shards.
    report = prepare_data(cfg, engine="ray" if ray_preprocess else "local")
    if nproc_per_node > 1:
        return subprocess.call(torchrun_command(config, overrides, resume, nproc_per_node, storage))

    # 4. One rank, in this process: the loop on the shards' rows.
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.train.loop import train

    result = train(cfg, load_train_data(report.manifest), resume=resume)
    print(f"trained to step {result.step}/{result.total_steps}; export {result.export_dir}", flush=True)
    return 0
