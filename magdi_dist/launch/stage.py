"""Runs whose output folder is in object storage (``train.output_dir: s3://bucket/runs/tiny``).

Every node works in its own mirror of the folder (``storage.local_mirror``, under ``$MAGDI_SCRATCH``)
with the code a local run uses, and the mirror is synced with the store where something becomes
durable. Nothing but the store is shared between nodes:

* the driver pulls what the store holds (shards, checkpoints, metrics) into its mirror, resolves the
  run there, prepares the shards and pushes them, and publishes ``run.json`` to the store;
* each node pulls the shards and the checkpoints before training (a replaced node starts from an
  empty scratch), its ranks taking turns (``node_turn``);
* after each checkpoint, each node pushes the files its ranks wrote, then rank 0
  pushes ``COMPLETE`` (with every file's hash) last, so a node killed mid-upload leaves a checkpoint
  the store does not call complete; checkpoints pruned locally are deleted from the store;
* rank 0 pushes the export and ``metrics.jsonl`` at the end.

A ``RunSpec`` in the store names store paths (``config.train.output_dir``, ``data.manifest``);
``on_node`` maps it onto this node's mirror. Shards are pushed and pulled when missing or of another
size, and small files always: shard files are named by the hash of the input they come from and
never change in place, the manifest and unit records do.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from magdi_dist.config import MAGDiConfig
from magdi_dist.run_spec import RunSpec
from magdi_dist.storage import is_uri, join, local_mirror

log = logging.getLogger("magdi_dist.train")
CHECKPOINTS = "checkpoints"
SMALL = 1 << 20  # always re-sent: manifests, unit records, markers, trainer states


def remote(cfg: MAGDiConfig) -> bool:
    return is_uri(cfg.train.output_dir)


def _shards_uri(cfg: MAGDiConfig) -> str:
    return cfg.preprocess.out_dir or join(cfg.train.output_dir, "shards")


def on_node(cfg: MAGDiConfig) -> MAGDiConfig:
    """``cfg`` with its store folders replaced by this node's mirrors (unchanged for local folders)."""
    if not remote(cfg):
        return cfg
    train = cfg.train.model_copy(update={"output_dir": str(local_mirror(cfg.train.output_dir))})
    pre = cfg.preprocess
    if pre.out_dir is not None and is_uri(pre.out_dir):
        pre = pre.model_copy(update={"out_dir": str(local_mirror(pre.out_dir))})
    return cfg.model_copy(update={"train": train, "preprocess": pre})


def spec_on_node(spec: RunSpec) -> RunSpec:
    """The stored run as this node runs it: outputs, shards and the resume checkpoint in its mirror."""
    if not remote(spec.config):
        return spec
    local = on_node(spec.config)
    update: dict = {"config": local}
    if spec.data is not None:
        update["data"] = spec.data.model_copy(update={"manifest": str(Path(_shards_dir(local)) / "manifest.json")})
    if spec.resume_from is not None:
        update["resume_from"] = str(Path(local.train.output_dir) / CHECKPOINTS / spec.resume_from.rsplit("/", 1)[-1])
    return spec.model_copy(update=update)


def spec_in_store(spec: RunSpec, stored: MAGDiConfig) -> RunSpec:
    """A run resolved on the driver's mirror, named by store paths again (what run.json holds)."""
    if not remote(stored):
        return spec
    update: dict = {"config": spec.config.model_copy(update={"train": spec.config.train.model_copy(
        update={"output_dir": stored.train.output_dir}), "preprocess": spec.config.preprocess.model_copy(
        update={"out_dir": stored.preprocess.out_dir})})}
    if spec.data is not None:
        update["data"] = spec.data.model_copy(update={"manifest": join(_shards_uri(stored), "manifest.json")})
    if spec.resume_from is not None:
        update["resume_from"] = join(stored.train.output_dir, CHECKPOINTS, Path(spec.resume_from).name)
    return spec.model_copy(update=update)


def _shards_dir(cfg: MAGDiConfig) -> str:
    from magdi_dist.preprocess.prepare import shards_dir

    return str(shards_dir(cfg))


@contextlib.contextmanager
def node_turn(mirror: Path):
    """One process of this node at a time in its mirror: ranks sharing a node (and a scratch disk)
    take turns, so the second finds the first's files and transfers nothing. A file lock, not local
    ranks: a launcher's local rank says nothing of which disk a process sees (Ray numbers the
    workers of one IP address together)."""
    import fcntl

    mirror.mkdir(parents=True, exist_ok=True)
    with (mirror / ".node.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pull(stored: MAGDiConfig, *, shards: bool = True, checkpoints: bool = True) -> list[Path]:
    """Bring this node's mirror up to date with the store (what is missing or of another size)."""
    local = on_node(stored)
    started = time.perf_counter()
    with node_turn(Path(local.train.output_dir)):
        got = _pull(stored, local, shards, checkpoints)
    if got:
        size = sum(p.stat().st_size for p in got)
        # print: this runs before the rank's logging is set up (train.loop)
        print(f"[storage] pulled {len(got)} files ({size / 1e6:.1f} MB) from {stored.train.output_dir} in "
              f"{time.perf_counter() - started:.1f}s", flush=True)
    return got


def _pull(stored: MAGDiConfig, local: MAGDiConfig, shards: bool, checkpoints: bool) -> list[Path]:
    from magdi_dist.storage import pull_tree

    out, uri = Path(local.train.output_dir), stored.train.output_dir
    got = []
    if checkpoints:
        got += [out / rel for rel in pull_tree(uri, out, only=(CHECKPOINTS + "/", "metrics.jsonl"), small=SMALL)]
    if shards:
        shards_dir = Path(_shards_dir(local))
        got += [shards_dir / rel for rel in pull_tree(_shards_uri(stored), shards_dir, small=SMALL)]
    return got


def push_shards(stored: MAGDiConfig) -> list[str]:
    from magdi_dist.storage import push_tree

    return push_tree(Path(_shards_dir(on_node(stored))), _shards_uri(stored), small=SMALL)


def push_run_file(spec_stored: RunSpec, local_run_file: Path) -> str:
    from magdi_dist.storage import put_file

    target = join(spec_stored.config.train.output_dir, local_run_file.name)
    put_file(local_run_file, target)
    put_file(local_run_file.with_name("resolved_config.yaml"), join(spec_stored.config.train.output_dir,
                                                                     "resolved_config.yaml"))
    return target


def checkpoint_pusher(stored_output_dir: str):
    """The loop's ``on_checkpoint`` for a stored run (every rank calls it after a complete save)."""
    from magdi_dist.storage import delete_tree, list_files, push_tree
    from magdi_dist.train.checkpoint import MARKER
    from magdi_dist.train.dist import barrier

    def on_checkpoint(path: Path, state: dict) -> None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        target = join(stored_output_dir, CHECKPOINTS, path.name)
        started = time.perf_counter()
        with node_turn(path.parent.parent):  # this node's files; a second rank here finds them sent
            sent = push_tree(path, target, skip=(MARKER,), small=SMALL)
        barrier()
        if rank == 0:
            push_tree(path, target, small=SMALL, last=(MARKER,))  # the marker last: now it is complete
            size = sum((path / rel).stat().st_size for rel in sent)
            log.info("checkpoint %s pushed to %s in %.1fs (rank 0's node: %d files, %.1f MB)", path.name, target,
                     time.perf_counter() - started, len(sent), size / 1e6)
            kept = {p.name for p in path.parent.iterdir()}
            stored = {rel.split("/", 1)[0] for rel in list_files(join(stored_output_dir, CHECKPOINTS))}
            for gone in sorted(stored - kept):  # pruned here (train.keep_last_k): pruned in the store
                delete_tree(join(stored_output_dir, CHECKPOINTS, gone))
            push_tree(path.parent.parent, stored_output_dir, small=SMALL,
                      skip=(CHECKPOINTS, "shards", "export"))  # metrics.jsonl so far

    return on_checkpoint


def push_results(local_output_dir: Path, stored_output_dir: str) -> None:
    """Rank 0 at the end: the export and what the run logged."""
    from magdi_dist.storage import push_tree

    if (local_output_dir / "export").is_dir():
        push_tree(local_output_dir / "export", join(stored_output_dir, "export"), small=SMALL)
    push_tree(local_output_dir, stored_output_dir, small=SMALL, skip=(CHECKPOINTS, "shards", "export"))


def preparation_engine(cfg: MAGDiConfig, engine: str, log=None) -> str:
    """A stored run's shards are prepared in this process: Ray Data's feature actors write their shards
    to the disk of the node they run on, which no other node sees (writing them to the store from the
    actors is not built yet)."""
    if remote(cfg) and engine != "local":
        (log or print)("preprocess: a run stored in object storage prepares its shards on this node")
        return "local"
    return engine


def prepare(cfg: MAGDiConfig, *, engine: str = "local", address: str | None = None, log=None):
    """``preprocess.prepare_data`` for a local or a stored run: a stored run's shards are prepared in
    this node's mirror (after pulling what the store holds, so a re-run does no work) and pushed.
    Returns (the report, where the manifest is: a local path or a store URI)."""
    from magdi_dist.preprocess.pipeline import print_log
    from magdi_dist.preprocess.prepare import prepare_data

    if not remote(cfg):
        report = prepare_data(cfg, engine=engine, address=address, log=log or print_log)
        return report, str(report.manifest)
    pull(cfg, checkpoints=False)
    report = prepare_data(on_node(cfg), engine=preparation_engine(cfg, engine, log), address=address,
                          log=log or print_log)
    push_shards(cfg)
    return report, join(_shards_uri(cfg), "manifest.json")
