"""Recipe: train one student.

    config (YAML + overrides) -> durable output paths
      -> the resolved run (launch.resolve: DeepSpeed config, shape, resume decision, memory check)
      -> teacher files -> Parquet shards (prepare_data, once, on this driver) -> run.json
      -> ranks read run.json and the shards and train (in this process, torchrun, or Ray Train)
      -> checkpoints, metrics.jsonl and the Hugging Face export under train.output_dir

``magdi-dist train`` and ``ray_jobs/train.py`` call ``run``; a bare torchrun or deepspeed launch
runs ``magdi_dist.launch.rank --config`` on every rank instead (its rank 0 is the driver).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from magdi_dist.config import MAGDiConfig, load_config, with_durable_outputs


def load(config: str | Path | None, overrides: list[str], storage: str | None = None) -> MAGDiConfig:
    """The validated config, with relative output paths resolved against the storage root."""
    return with_durable_outputs(load_config(config, overrides), storage)


def run(config: str | Path, overrides: list[str], *, storage: str | None = None, resume: bool = True,
        nproc_per_node: int = 1, ray_workers: int = 0, ray_preprocess: bool = False, **ray_options) -> int:
    """Train with ``nproc_per_node`` local ranks, or ``ray_workers`` Ray Train workers; exit code."""
    from magdi_dist.launch.resolve import claimed, prepare_and_publish, resolve_run

    cfg = load(config, overrides, storage)

    # Ray Train: the launcher resolves the run for the cluster's devices, prepares the data there,
    # then starts its workers.
    if ray_workers:
        from magdi_dist.launch.ray_train import train_on_ray

        summary = train_on_ray(cfg, num_workers=ray_workers, resume=resume, **ray_options)
        return 0 if summary.get("step") == summary.get("total_steps") else 1

    # Local ranks: resolved and checked before anything is written (on this node's mirror for a run
    # stored in object storage, after pulling what the store holds), the output folder locked, the
    # data prepared once, here.
    from magdi_dist.launch.stage import on_node, pull, remote
    from magdi_dist.train.dist import select_accelerator

    if remote(cfg):
        pull(cfg)
    spec = resolve_run(on_node(cfg), world_size=nproc_per_node, accelerator=select_accelerator(), resume=resume,
                       check_memory=True)
    with claimed(spec, stored=cfg):
        print(f"outputs: {cfg.train.output_dir}", flush=True)
        spec = prepare_and_publish(spec, stored=cfg, engine="ray" if ray_preprocess else "local")
        if nproc_per_node > 1:
            from magdi_dist.launch.torchrun import torchrun_command

            return subprocess.call(torchrun_command(spec.run_file, nproc_per_node))

        # One rank, in this process.
        from magdi_dist.launch.rank import run_rank

        result = run_rank(spec)
        export = result.export_dir
        if remote(cfg) and export is not None:  # the mirror's copy was pushed: name the stored one
            from magdi_dist.storage import join

            export = join(cfg.train.output_dir, "export")
        print(f"trained to step {result.step}/{result.total_steps}; export {export}", flush=True)
        return 0
