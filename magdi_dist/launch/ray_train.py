"""Ray Train launcher: N workers, each a DeepSpeed engine running ``train.loop.train`` on the resolved
run (launch/resolve.py) and its Parquet shards, restarted from the newest complete checkpoint when a
worker dies.

How the pieces meet:

* Ray Train (V2, the default in Ray 2.60) creates the process group itself (gloo on CPU, nccl with
  GPUs) and sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT on every
  worker. ``train.dist.init_distributed`` sees ``torch.distributed`` already initialised and skips its
  own init; ``deepspeed.initialize`` then wraps that process group (``deepspeed.comm.init_distributed``
  builds its backend on an initialised torch.distributed instead of creating a new one). The loop
  stays Ray-agnostic: it reads only the torch.distributed env vars.
* Checkpoints are the loop's own (``output_dir/checkpoints/step-N/`` + ``COMPLETE``), written by every
  rank to shared storage. The run's Ray storage *is* ``output_dir`` (``storage_path`` = its parent,
  ``name`` = its name), so each checkpoint directory lies inside Ray's experiment directory and every
  rank reports it in place (``CheckpointUploadMode.NO_UPLOAD``): Ray records it without copying or
  keeping only rank 0's files (ray-project/ray#33369), and ZeRO's per-rank shards stay whole.
* On a worker failure Ray Train tears the group down and starts a new one (``FailureConfig``); the
  loop resumes from the newest complete checkpoint, with the data position and every rank's RNG, so
  the run ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magdi_dist.config import MAGDiConfig
from magdi_dist.preprocess.pipeline import Log, print_log
from magdi_dist.run_spec import RunSpec

if TYPE_CHECKING:  # the loop imports torch and DeepSpeed; the driver only needs the type
    from magdi_dist.train.loop import CheckpointCallback

log = logging.getLogger(__name__)


def report_to_ray(then: CheckpointCallback | None = None, stored_output_dir: str | None = None) -> CheckpointCallback:
    """The loop's ``on_checkpoint``: report each complete checkpoint to Ray Train, in place, from every
    rank, then call ``then`` (a user's callback) if given. A stored run's checkpoint is reported where
    it lies in the store (launch/stage.py pushed it, ``COMPLETE`` last, before this is called).

    ``checkpoint.save`` is collective and returns on all ranks once the directory is complete (rank 0
    writes COMPLETE before returning; ``ray.train.report`` is itself a barrier), so every rank reports
    the same number of times, as Ray Train requires.
    """
    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode

    def on_checkpoint(path: Path, state: dict) -> None:
        if stored_output_dir is None:
            ckpt = Checkpoint.from_directory(str(path))
        else:
            from magdi_dist.launch.stage import CHECKPOINTS
            from magdi_dist.storage import filesystem, join

            fs, where = filesystem(join(stored_output_dir, CHECKPOINTS, path.name))
            ckpt = Checkpoint(where, filesystem=fs)
        ray.train.report({"step": state["step"], "data_position": state["data_position"]}, checkpoint=ckpt,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
        if then is not None:
            then(path, state)

    return on_checkpoint


def _mlflow_callback(tracking: dict | None, rank: int):
    """Per-step metrics into the cell's MLflow run, from rank 0 only (one run per cell, never one
    per rank). The driver creates the run; workers only append to it."""
    if not tracking or rank != 0:
        return None
    from magdi_dist.track import MetricsLogger

    return MetricsLogger(tracking["uri"], tracking["run_id"], rank=rank, flush_every=20)


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """What every Ray Train worker runs: the resolved run's shard rows, the loop, a summary out (rank
    0's is kept). The run arrives as the driver's ``RunSpec`` object: nothing is re-validated or
    re-derived here, and no file on the driver's disk is read."""
    import ray.train

    from magdi_dist.launch.rank import run_rank
    from magdi_dist.launch.stage import remote, spec_on_node
    from magdi_dist.train import checkpoint

    spec: RunSpec = config["run"]
    ctx = ray.train.get_context()
    previous = ray.train.get_checkpoint()
    resumed = checkpoint.latest_checkpoint(spec_on_node(spec).output_dir) is not None or previous is not None
    print(f"[launch] rank {ctx.get_world_rank()}/{ctx.get_world_size()} pid {os.getpid()}; "
          f"{'resuming' if resumed else 'starting'} (Ray's last checkpoint: "
          f"{previous.path if previous else None})", flush=True)
    logger = _mlflow_callback(config.get("tracking"), ctx.get_world_rank())
    stored = spec.config.train.output_dir if remote(spec.config) else None
    try:
        # A restart after a failure resumes from the newest complete checkpoint: the driver removed
        # older runs' checkpoints for --no-resume, so every one there is this run's.
        result = run_rank(spec, metrics_callback=logger,
                          on_checkpoint=report_to_ray(config.get("on_checkpoint"), stored))
    finally:
        if logger is not None:
            logger.close()  # flush the buffered steps, also when training fails
    return {
        "step": result.step,
        "total_steps": result.total_steps,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "export_dir": str(result.export_dir) if result.export_dir else None,
    }


def gpus_available() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def train_on_ray(
    cfg: MAGDiConfig,
    *,
    num_workers: int = 2,
    use_gpu: bool | None = None,
    cpus_per_worker: float = 1.0,
    max_failures: int = 3,
    resume: bool = True,
    address: str | None = None,
    log: Log = print_log,
    tracking: dict[str, str] | None = None,
    storage: str | None = None,
    on_checkpoint: CheckpointCallback | None = None,
) -> dict[str, Any]:
    """Preprocess what is missing, then train with ``num_workers`` Ray Train workers; returns rank
    0's summary (final step, checkpoint, export dir). Without ``address`` (or ``RAY_ADDRESS``, set for a
    submitted job) an embedded local Ray is started and shut down again. ``tracking`` ({"uri", "run_id"})
    sends rank 0's per-step metrics to that MLflow run. Relative output paths resolve against
    ``storage`` (``config.durable_path``). ``on_checkpoint(path, state)`` runs on every worker after
    each checkpoint has been reported to Ray (it travels to the workers pickled)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from magdi_dist.config import with_durable_outputs
    from magdi_dist.launch.resolve import claimed, prepare_and_publish, resolve_run
    from magdi_dist.launch.stage import on_node, pull, remote
    from magdi_dist.preprocess.session import ray_session

    # Every worker and every restart must find the same directory, whatever its working directory.
    cfg = with_durable_outputs(cfg, storage)
    out = cfg.train.output_dir
    log(f"outputs: {out}")
    with ray_session(address, num_cpus=max(os.cpu_count() or 1, int(num_workers * cpus_per_worker) + 1)):
        gpu = gpus_available() if use_gpu is None else use_gpu
        # Resolved for the cluster's devices; their memory is planned with `magdi-dist plan`, not here.
        if remote(cfg):
            pull(cfg)  # the driver resolves on its mirror of the store
        spec = resolve_run(on_node(cfg), world_size=num_workers, accelerator="cuda" if gpu else "cpu",
                           resume=resume)
        with claimed(spec, log, stored=cfg):
            spec = prepare_and_publish(spec, stored=cfg, engine="ray", log=log)
            resources = {"CPU": cpus_per_worker, **({"GPU": 1} if gpu else {})}
            log(f"train: {num_workers} Ray Train worker(s), {'GPU' if gpu else 'CPU'} ({resources}), "
                f"max_failures={max_failures}, output {out}")
            trainer = TorchTrainer(
                train_worker,
                train_loop_config={"run": spec, "tracking": tracking, "on_checkpoint": on_checkpoint},
                scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpu, resources_per_worker=resources),
                torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
                run_config=RunConfig(
                    # Ray's run folder is the output folder (local, or in the store): its checkpoints
                    # are reported where they already are.
                    name=out.rstrip("/").rsplit("/", 1)[-1],
                    storage_path=out.rstrip("/").rsplit("/", 1)[0],
                    failure_config=FailureConfig(max_failures=max_failures),
                    # Our loop prunes its own checkpoints (train.keep_last_k); Ray must not delete any.
                    checkpoint_config=CheckpointConfig(num_to_keep=None),
                ),
            )
            result = trainer.fit()
    summary = dict(result.return_value or {})
    log(f"train: finished at step {summary.get('step')} of {summary.get('total_steps')}; "
        f"checkpoint {summary.get('checkpoint')}; export {summary.get('export_dir')}")
    return summary
