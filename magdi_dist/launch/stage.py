"""Runs whose output folder is in object storage (``train.output_dir: s3://bucket/runs/tiny``).

Every node works in its own mirror of the folder (``storage.local_mirror``, under ``$MAGDI_SCRATCH``)
with the code a local run uses, and the mirror is synced with the store where something becomes
durable. Nothing but the store is shared between nodes:

* the driver pulls what the store holds (shards, checkpoints, metrics) into its mirror, resolves the
  run there, prepares the shards and pushes them, and publishes ``run.json`` to the store;
* each rank pulls the shards and the newest complete checkpoint before training (a replaced node
  starts from an empty scratch), and of that checkpoint's per-rank files only its own (``rank_files``):
  DeepSpeed loads nothing else on resume; the ranks of a node take turns (``node_turn``), and a
  checkpoint this node holds complete but the store does not is dropped (its upload never finished);
* after each checkpoint, each node pushes the files its ranks wrote, then rank 0
  pushes ``COMPLETE`` (with every file's hash) last, so a node killed mid-upload leaves a checkpoint
  the store does not call complete; checkpoints pruned locally are deleted from the store;
* rank 0 pushes the export and ``metrics.jsonl`` at the end.

A ``RunSpec`` in the store names store paths (``config.train.output_dir``, ``data.manifest``);
``on_node`` maps it onto this node's mirror. Shards are pushed and pulled when missing or of another
size, and small files always: shard files are named by the hash of the input they come from and
never change in place, the manifest and unit records do.

Two choices, and why:

* Every node pulls every shard, not only its ranks' rows: the sampler (train/sampler.py) reshuffles all
  rows every epoch and batches them by length, so it needs every row's length, and over a run each
  rank reads rows of every shard. Shards are small next to one checkpoint of the model they train.
* The ranks push their checkpoint files themselves rather than through Ray Train's checkpoint upload:
  the same code and layout serve a run under torchrun or plain python, where there is no Ray; ranks
  sharing a node share its mirror, so a node sends its files once; and ``COMPLETE``, with every
  file's hash, must reach the store only after every node's files have. Ray Train still records each
  checkpoint, where it lies in the store (``launch.ray_train.report_to_ray``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from pathlib import Path

from magdi_dist.config import MAGDiConfig
from magdi_dist.run_spec import RunSpec
from magdi_dist.storage import is_uri, join, local_mirror

log = logging.getLogger("magdi_dist.train")
CHECKPOINTS = "checkpoints"
SMALL = 1 << 20  # always re-sent: manifests, unit records, markers, trainer states
EVERY = 1 << 62  # as ``small``: every file sent, whatever the other side holds (an export rewritten in place)
# A checkpoint file of one rank: ZeRO's optimizer shard (and under ZeRO-3 its parameter shard), any
# precision prefix, and our RNG state. Everything else (ZeRO-1/2's mp_rank_00_model_states.pt, the
# trainer state, COMPLETE) every rank reads.
RANK_FILE = re.compile(r"(?:^|_)zero_pp_rank_(\d+)_|^rng_state_rank(\d+)\.pt$")
STEP_DIR = re.compile(r"step-\d+")  # a checkpoint's folder (not one set aside as ``.corrupt``)


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


def pull(stored: MAGDiConfig, *, shards: bool = True, checkpoints: bool = True, rank: int | None = None) -> list[Path]:
    """Bring this node's mirror up to date with the store (what is missing or of another size).
    ``rank``: what that training rank resumes from (the newest complete checkpoint, its own shards);
    None: everything (a driver, which verifies every file of every checkpoint before it resumes)."""
    local = on_node(stored)
    started = time.perf_counter()
    with node_turn(Path(local.train.output_dir)):
        got = _pull(stored, local, shards, checkpoints, rank)
    if got:
        size = sum(p.stat().st_size for p in got)
        # print: this runs before the rank's logging is set up (train.loop)
        print(f"[storage] {'the driver' if rank is None else f'rank {rank}'} pulled {len(got)} files "
              f"({size / 1e6:.1f} MB) from {stored.train.output_dir} in {time.perf_counter() - started:.1f}s",
              flush=True)
    return got


def rank_files(names: list[str], rank: int) -> list[str]:
    """The files of one checkpoint (names relative to it) that ``rank`` loads: the shared ones and its
    own (``RANK_FILE``). DeepSpeed reads only its own rank's ZeRO shard unless
    ``zero_optimization.elastic_checkpoint`` is on (legacy, off by default; refused by ZeRO-3)."""
    own = []
    for name in names:
        match = RANK_FILE.search(name.rsplit("/", 1)[-1])
        if match is None or int(match.group(1) or match.group(2)) == rank:
            own.append(name)
    return own


def _checkpoint_files(uri: str, out: Path, rank: int | None) -> tuple[str, ...]:
    """What of the store's checkpoints this pull takes (prefixes for ``pull_tree``), after dropping the
    mirror's checkpoints the store does not hold complete: a marker written here whose upload was
    cut off would otherwise be resumed from on this node and on no other."""
    from magdi_dist.storage import list_files
    from magdi_dist.train.checkpoint import MARKER

    stored = list_files(join(uri, CHECKPOINTS))
    complete = sorted(rel.split("/", 1)[0] for rel in stored if rel.count("/") == 1 and rel.endswith("/" + MARKER))
    root = out / CHECKPOINTS
    for step in sorted(root.iterdir()) if root.is_dir() else []:
        if STEP_DIR.fullmatch(step.name) and (step / MARKER).is_file() and step.name not in complete:
            log.warning("checkpoint %s is complete here but not in %s: dropped", step, uri)
            shutil.rmtree(step)
    if rank is None:
        return (CHECKPOINTS + "/",)
    if not complete:
        return ()
    newest = complete[-1]
    names = [rel.split("/", 1)[1] for rel in stored if rel.startswith(newest + "/")]
    return tuple(f"{CHECKPOINTS}/{newest}/{name}" for name in rank_files(names, rank))


def _pull(stored: MAGDiConfig, local: MAGDiConfig, shards: bool, checkpoints: bool, rank: int | None) -> list[Path]:
    from magdi_dist.storage import pull_tree

    out, uri = Path(local.train.output_dir), stored.train.output_dir
    got = []
    if checkpoints:
        only = (*_checkpoint_files(uri, out, rank), "metrics.jsonl")
        got += [out / rel for rel in pull_tree(uri, out, only=only, small=SMALL)]
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
            # Its older checkpoints' files are in the store: a node other than rank 0's (whose loop
            # prunes by train.keep_last_k, and which alone holds the markers) would keep them all.
            for old in sorted(path.parent.iterdir()):
                if STEP_DIR.fullmatch(old.name) and old.name < path.name and not (old / MARKER).exists():
                    shutil.rmtree(old, ignore_errors=True)
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

    if (local_output_dir / "export").is_dir():  # every file: a re-run's weights have the old ones' sizes
        push_tree(local_output_dir / "export", join(stored_output_dir, "export"), small=EVERY)
    push_tree(local_output_dir, stored_output_dir, small=SMALL, skip=(CHECKPOINTS, "shards", "export"))


def preparation(cfg: MAGDiConfig, engine: str, log=None) -> tuple[str, str | None]:
    """(engine, store) for preparing ``cfg``'s shards. A stored run's Ray Data tasks and actors may run
    on any node: they put what they write into the store (preprocess/stages.py), and read what the
    driver wrote from it. They can do that only if every input is an object or written by the driver
    (synthetic MAGs, a ``data.max_mags`` cut) and the tokenizer and feature model are not folders on
    this node's disk; otherwise the shards are prepared on this node."""
    if not remote(cfg) or engine == "local":
        return engine, None
    from magdi_dist.preprocess.prepare import resolve

    pre, spec = resolve(on_node(cfg))
    mirror = pre.out_dir.rstrip("/") + "/"
    here_only = [p for p in pre.inputs if not is_uri(p) and not str(p).startswith(mirror)]
    here_only += [p for p in (spec.tokenizer, spec.model) if isinstance(p, str) and not str(p).startswith(mirror)
                  and Path(p).expanduser().exists()]
    if here_only:
        (log or print)(f"preprocess: {here_only[0]} is on this node's disk only: the shards are prepared on "
                       "this node (give data.paths as object-store URIs to prepare them on the cluster)")
        return "local", None
    return engine, _shards_uri(cfg)


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
    engine, store = preparation(cfg, engine, log)
    report = prepare_data(on_node(cfg), engine=engine, address=address, store=store, log=log or print_log)
    push_shards(cfg)
    return report, join(_shards_uri(cfg), "manifest.json")


# --- a study's driver: its cells are stored runs -------------------------------------------------


def here(folder: str) -> Path:
    """This node's folder for a run or study folder: the mirror of a stored one (a URI), else itself."""
    return local_mirror(folder) if is_uri(folder) else Path(folder)


def pull_export(stored: MAGDiConfig) -> Path:
    """A finished stored run's export and ``metrics.jsonl`` in this node's mirror (where the driver
    evaluates and registers it: rank 0 ran elsewhere); the export's every file, since a re-run's have
    the old ones' sizes. Returns the export folder."""
    from magdi_dist.storage import pull_tree

    out = here(stored.train.output_dir)
    with node_turn(out):
        pull_tree(join(stored.train.output_dir, "export"), out / "export", small=EVERY)
        pull_tree(stored.train.output_dir, out, only=("metrics.jsonl",), small=EVERY)
    return out / "export"


def stored_checkpoint(stored: MAGDiConfig, path: str | None) -> str | None:
    """A checkpoint a rank reported (a path in its node's mirror) named where it lies in the store."""
    if path is None or not remote(stored):
        return path
    return join(stored.train.output_dir, CHECKPOINTS, Path(path).name)


def push_folder(local: Path, uri: str) -> list[str]:
    """A study's own files (summary, curve, fit, held-out questions) into its stored folder; every
    file, since they are rewritten in place."""
    from magdi_dist.storage import push_tree

    return push_tree(local, uri, small=EVERY) if is_uri(uri) else []


def push_driver_files(stored: MAGDiConfig) -> list[str]:
    """What a driver wrote into a stored run's mirror (a study's evaluation of it, its result file)
    into the store; not the export it pulled, nor checkpoints or shards."""
    from magdi_dist.storage import push_tree

    if not remote(stored):
        return []
    return push_tree(here(stored.train.output_dir), stored.train.output_dir, small=SMALL,
                     skip=(CHECKPOINTS, "shards", "export"))
