"""Resolve a run once, on the driver: config -> ``RunSpec`` (run_spec.py) -> ``<output_dir>/run.json``.

Every launcher calls ``resolve_run`` before any rank starts (``magdi-dist train``, ``ray_jobs/train.py``
and study cells through ``launch.ray_train``, rank 0 of a bare ``torchrun ... -m magdi_dist.launch.rank
--config``), then ``with_data`` once the shards are prepared, then hands the ranks the result. What
it decides here is decided nowhere else:

* the DeepSpeed config and the optimizer choice (``train.engine.engine_config``), with the ZeRO-3
  bucket sizes from the model's hidden size;
* the model's shape, counted on the meta device (``model.shapes``): no data and no weights needed,
  so ``magdi-dist plan`` and this pre-flight share it;
* ``lm_passes: auto`` made concrete for this world size and ZeRO stage;
* the resume decision: the newest complete checkpoint is checked against this config's hash and
  world size (``CheckpointMismatch``), or with ``resume=False`` every old checkpoint is deleted
  (by ``claimed``, under the output folder's lock);
* on this machine, whether the run fits its memory (``launch.plan.check_fits``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from magdi_dist.config import ConfigError, MAGDiConfig, config_hash
from magdi_dist.run_spec import ModelShape, RunData, RunSpec


def model_shape(cfg: MAGDiConfig) -> tuple[ModelShape, object]:
    """(the spec's shape, model.shapes.StudentShape for the capacity plan); ConfigError when the
    model's config cannot be read here."""
    from magdi_dist.model.shapes import ShapeError, config_shape

    try:
        shape = config_shape(cfg)
    except ShapeError as err:
        raise ConfigError(f"model.base: {err}") from None
    return ModelShape(hidden_size=shape.hidden_size, params=shape.params, trainable_params=shape.trainable_params,
                      lm_params=shape.lm_params, largest_layer_params=shape.largest_layer_params,
                      vocab_size=shape.vocab_size), shape


def resolve_run(cfg: MAGDiConfig, *, world_size: int, accelerator: str, resume: bool = True,
                check_memory: bool = False) -> RunSpec:
    """The run ``cfg`` (durable output paths already applied) makes on ``world_size`` ranks of
    ``accelerator``; it writes nothing (``claimed`` takes the folder and applies ``resume=False``).
    ``check_memory``: the ranks run on this machine, so the capacity plan must say they fit."""
    from magdi_dist.model.student import resolve_lm_passes
    from magdi_dist.train import checkpoint
    from magdi_dist.train.engine import engine_config

    shape, student_shape = model_shape(cfg)
    ds_config, optimizer = engine_config(cfg, world_size, accelerator, shape.hidden_size)
    run_cfg = cfg.model_copy(update={"model": resolve_lm_passes(cfg.model, ds_config, world_size)})
    run_hash = config_hash(run_cfg)
    out = Path(cfg.train.output_dir)
    latest, corrupt = checkpoint.newest_intact(out, cfg.train.verify_checkpoints) if resume else (None, [])
    if latest is not None:
        checkpoint.check_state(latest, run_hash, world_size)
    spec = RunSpec(config=run_cfg, config_hash=run_hash, world_size=world_size, accelerator=accelerator,
                   ds_config=ds_config, optimizer=optimizer, shape=shape, resume=resume,
                   resume_from=str(latest) if latest else None, corrupt=[str(p) for p in corrupt])
    if check_memory and not cfg.train.skip_memory_check:
        from magdi_dist.launch.plan import check_fits

        check_fits(spec, student_shape)
    return spec


@contextlib.contextmanager
def claimed(spec: RunSpec, log=print, *, stored: MAGDiConfig | None = None) -> Iterator[RunSpec]:
    """Hold the run's output folder for the driver's lifetime (``launch.lock``; for a stored run, a
    lock object in the store): the teacher files are checked first, so a refused run writes nothing;
    then the folder is locked, and only then does ``resume=False`` delete the old checkpoints (never
    another live run's) and a corrupt checkpoint go out of the ranks' way."""
    from magdi_dist.launch.lock import run_lock
    from magdi_dist.launch.stage import CHECKPOINTS, remote
    from magdi_dist.preprocess.prepare import check_inputs
    from magdi_dist.storage import delete_tree, join
    from magdi_dist.train import checkpoint

    check_inputs(spec.config)
    store = stored.train.output_dir if stored is not None and remote(stored) else None
    with run_lock(store or spec.output_dir, log):
        if not spec.resume:
            checkpoint.clear(spec.output_dir)
            if store:
                delete_tree(join(store, CHECKPOINTS))
        for bad in spec.corrupt:  # newer than the one resumed from: out of the ranks' way, kept to inspect
            log(f"checkpoint: set aside as {checkpoint.set_aside(Path(bad), checkpoint.verify(Path(bad)))}")
            if store:
                delete_tree(join(store, CHECKPOINTS, Path(bad).name))
        yield spec


def publish(spec: RunSpec) -> str:
    """Write the run for its ranks (run.json, resolved_config.yaml; in the store for a stored run) and
    show the config in the log."""
    from magdi_dist.run_spec import resolved_yaml, write_run

    path = write_run(spec)
    print(resolved_yaml(spec), flush=True)
    return path


def prepare_and_publish(spec: RunSpec, *, stored: MAGDiConfig | None = None, engine: str = "local",
                        address: str | None = None, log=None) -> RunSpec:
    """Bring the run's shards up to date (``preprocess.prepare_data``, on this driver or its Ray
    cluster), attach them to the run and publish it: what every launcher does before its ranks start.
    A stored run (``stored``: the config naming the store) was resolved on this node's mirror: its
    shards are pushed, and the run is published, and returned, naming store paths (launch/stage.py)."""
    from magdi_dist.launch.stage import preparation, push_shards, remote, spec_in_store
    from magdi_dist.preprocess.pipeline import print_log
    from magdi_dist.preprocess.prepare import prepare_data

    store = None
    if stored is not None:
        engine, store = preparation(stored, engine, log)
    report = prepare_data(spec.config, engine=engine, address=address, store=store, log=log or print_log)
    spec = with_data(spec, report.manifest)
    if stored is not None and remote(stored):
        push_shards(stored)
        spec = spec_in_store(spec, stored)
    publish(spec)
    return spec


def with_data(spec: RunSpec, manifest: str | Path) -> RunSpec:
    """``spec`` with the prepared shards of ``manifest`` (``preprocess.prepare_data``'s report)."""
    from magdi_dist.data.shards import load_manifest

    path = Path(manifest).resolve()
    loaded = load_manifest(path)
    split = {k: v for k, v in loaded["split"].items() if k != "heldout"}
    return spec.model_copy(update={"data": RunData(manifest=str(path), fingerprint=loaded["fingerprint"],
                                                   split=split)})
