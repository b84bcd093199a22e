"""The preprocessing driver: plan (hash inputs, find what is already done), run the stages on Ray Data
or in-process, record each finished input, and derive the manifest.

Idempotence lives in the plan: an input whose key (content hash, file name, pipeline fingerprint) has
a complete record is not even parsed, so a re-run on unchanged inputs starts no Ray work at all, and
adding a file processes that file only.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magdi_dist.config import PreprocessConfig
from magdi_dist.preprocess import fingerprint as fp
from magdi_dist.preprocess.featurize import FeatureSpec, feature_dim, load_feature_model, load_tokenizer
from magdi_dist.preprocess.inputs import PIPELINE_VERSION, content_fields, expand_inputs, source_of
from magdi_dist.preprocess.manifest import (
    REJECTS,
    SHARD_SCHEMA_VERSION,
    SHARDS,
    build_manifest,
    load_unit_record,
    manifest_path,
    relative_to,
    unit_record,
    unit_record_path,
    write_manifest,
)
from magdi_dist.preprocess.session import ray_session
from magdi_dist.preprocess.shard_io import atomic_write_json, remove_stale_tmp
from magdi_dist.preprocess.stages import ShardBuilder, parse_unit

Log = Callable[[str], None]


def print_log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class PreprocessReport:
    manifest: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    manifest_changed: bool = False
    seconds: float = 0.0

    def line(self) -> str:
        t = self.totals
        what = f"processed {len(self.processed)} new input(s)" if self.processed else "nothing to do"
        return (
            f"preprocess: {what}, {len(self.skipped)} up to date; {t['inputs']} inputs, {t['records_in']} "
            f"records -> {t['mags']} MAGs + {t['rejected']} rejected -> {t['rows']} rows in {t['shards']} "
            f"shards; {self.split.get('questions')} questions, {self.split.get('heldout_questions')} held out; "
            f"manifest {'written' if self.manifest_changed else 'unchanged'} ({self.manifest}) "
            f"in {self.seconds:.1f}s"
        )


def detect_device(settings: dict[str, Any]) -> str:
    """'cuda' when feature actors get a GPU. Connected to a cluster, its GPUs decide, not the driver's."""
    if settings["num_gpus"] is not None:
        return "cuda" if settings["num_gpus"] > 0 else "cpu"
    # Never imported: not connected. The local engine runs where Ray is not installed (a bare GPU box).
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def header(settings: dict[str, Any], spec: FeatureSpec, device: str) -> dict[str, Any]:
    """Everything that shapes the shards, hashed into the pipeline fingerprint."""
    from magdi_dist.mag.schema import SCHEMA_VERSION

    tokenizer = load_tokenizer(spec.tokenizer)
    model = load_feature_model(spec, "cpu")
    prints = {
        "tokenizer": fp.tokenizer_fingerprint(tokenizer),
        "model": fp.model_fingerprint(model),
        "environment": fp.environment_fingerprint(),
        "device": device,
    }
    # The spec's paths and model identity are covered by the tokenizer and weight hashes above.
    content = {"preprocess": content_fields(settings),
               "features": spec.model_dump(include={"features", "pooling", "rows"})}
    versions = {"pipeline": PIPELINE_VERSION, "mag_schema": SCHEMA_VERSION, "shard_schema": SHARD_SCHEMA_VERSION}
    return {
        "pipeline_version": PIPELINE_VERSION,
        "mag_schema_version": SCHEMA_VERSION,
        "fingerprint": fp.sha256_json({"versions": versions, "content": content, **prints}),
        "fingerprints": prints,
        "feature_dim": feature_dim(model),
        # Paths inside the output folder are written relative to it (see manifest.py).
        "config": {"preprocess": {"inputs": [relative_to(i, settings["out_dir"]) for i in settings["inputs"]],
                                  **content_fields(settings)},
                   "features": {**spec.model_dump(), "tokenizer": relative_to(spec.tokenizer, settings["out_dir"])}},
    }


def _run_local(units, settings, spec, device) -> Iterable[dict]:
    """The same stages in this process, one after the other (``magdi-dist train``'s driver, tests, the
    benchmark baseline). The builder sets torch's thread count (part of the fingerprint); the caller's
    is restored, since this process may go on to train."""
    import torch

    threads = torch.get_num_threads()
    try:
        builder = ShardBuilder(spec.model_dump(), settings, device)
        for unit in units:
            for row in parse_unit(unit, settings=settings):
                yield builder.build(row)
    finally:
        torch.set_num_threads(threads)


def _run_ray(units, settings, spec, device) -> Iterable[dict]:
    """parse (tasks) -> features, rows, write (actor pool), summaries streamed back shard by shard."""
    import ray

    s = settings
    gpus = s["num_gpus"] if s["num_gpus"] is not None else (1 if device == "cuda" else 0)
    ds = ray.data.from_items(units, override_num_blocks=len(units))  # one block per input file
    ds = ds.flat_map(parse_unit, fn_kwargs={"settings": s})
    # A file's shards leave parse_unit as one block, and an actor takes a whole block: without this a
    # single big teacher file would be featurised by one actor while the others idle. Streaming
    # repartition gives every actor call its own block of ``batch_size`` shards.
    ds = ds.repartition(target_num_rows_per_block=s["batch_size"])
    ds = ds.map_batches(
        ShardBuilder,
        fn_constructor_kwargs={"spec": spec.model_dump(), "settings": s, "device": device},
        batch_size=s["batch_size"],
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=s["concurrency"]),
        num_cpus=s["actor_num_cpus"],
        num_gpus=gpus,
    )
    yield from ds.iter_rows()


ENGINES = {"ray": _run_ray, "local": _run_local}


def run_preprocess(
    pre: PreprocessConfig,
    spec: FeatureSpec,
    *,
    format: str | None = None,
    task: str | None = None,
    clean_patterns: list[str] | None = None,
    split: dict[str, Any] | None = None,
    engine: str = "ray",
    address: str | None = None,
    store: str | None = None,
    log: Log = print_log,
) -> PreprocessReport:
    """Bring ``pre.out_dir`` up to date with ``pre.inputs`` (both set: ``prepare_data`` resolves them
    from a run config); return what was done. ``format``/``task`` are the reader's (``data``'s);
    ``clean_patterns``: chain-cleaning regexes (``mag.clean``; None or empty: no cleaning); ``split``
    ({"eval_fraction", "seed"}, default 0.1 and 0) is recorded in the manifest.

    ``engine="ray"`` uses the Ray this process is connected to, or the cluster at ``address`` /
    ``RAY_ADDRESS``; without either it starts an embedded local Ray, and only when some input needs
    work (an up-to-date re-run never starts Ray).

    ``store``: the URI of the object-storage folder ``pre.out_dir`` mirrors (launch/stage.py): tasks and
    actors, on whatever node they run, put the shards and rejects they write there (stages.py); the
    driver writes the unit records and the manifest into ``pre.out_dir``, for its caller to push.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {sorted(ENGINES)}")
    if not pre.inputs or not pre.out_dir:
        raise ValueError("run_preprocess needs preprocess.inputs and preprocess.out_dir set")
    settings = {**pre.model_dump(), "format": format, "task": task, "clean_patterns": list(clean_patterns or []),
                "store": store}
    split = split or {"eval_fraction": 0.1, "seed": 0}
    with ExitStack() as stack:
        if engine == "ray" and (address or os.environ.get("RAY_ADDRESS")):
            stack.enter_context(ray_session(address))  # a cluster's GPUs decide the feature device
        return _run(settings, spec, split, engine, stack, log)


def _run(settings: dict[str, Any], spec: FeatureSpec, split: dict[str, Any], engine: str, stack: ExitStack,
         log: Log):
    start = time.perf_counter()
    out_dir = Path(settings["out_dir"])
    device = detect_device(settings)
    head = header(settings, spec, device)
    inputs = []
    for path in expand_inputs(settings["inputs"]):
        sha = fp.sha256_file(path)
        # An object's copy is named by its URI: the manifest's name for it, and what a Ray task reads.
        inputs.append((source_of(path), path.name, sha, fp.unit_key(sha, path.name, head["fingerprint"])))
    report = PreprocessReport(manifest=manifest_path(out_dir))
    records = {key: rec for *_, key in inputs if (rec := load_unit_record(out_dir, key)) is not None}
    pending: dict[str, dict] = {}
    for path, name, sha, key in inputs:
        if key in records:
            report.skipped.append(path)
        elif key not in pending:  # the same bytes under the same name twice: one unit of work
            pending[key] = {"unit": key, "path": path, "name": name, "sha256": sha, "out_dir": str(out_dir),
                            "store": settings["store"]}
            report.processed.append(path)
    if pending:
        log(f"preprocess: {len(pending)} of {len(inputs)} input(s) need work "
            f"(engine={engine}, device={device}, fingerprint {head['fingerprint'][:12]})")
        remove_stale_tmp(out_dir)
        if settings["store"] and engine == "ray":  # what the driver wrote here (inputs, tokenizer), for other nodes
            from magdi_dist import storage

            storage.push_tree(out_dir, settings["store"], skip=(SHARDS, REJECTS))
        if engine == "ray":
            import ray  # only this engine needs Ray: the local one runs where it is not installed

            if not ray.is_initialized():
                # Room for the actor pool plus the parse tasks, or the tasks would wait behind the actors.
                cpus = max(os.cpu_count() or 1, math.ceil(settings["concurrency"] * settings["actor_num_cpus"]) + 1)
                stack.enter_context(ray_session(num_cpus=cpus))
        got: dict[str, list[dict]] = defaultdict(list)
        for summary in ENGINES[engine](list(pending.values()), settings, spec, device):
            key = summary["unit"]
            got[key].append(summary)
            if len(got[key]) < summary["n_chunks"]:
                continue
            unit = pending[key]
            # Written last, after every shard of the input is in place: the input's "done" marker.
            records[key] = unit_record(key, unit["name"], unit["sha256"], got[key])
            atomic_write_json(unit_record_path(out_dir, key), records[key])
            rec = records[key]
            log(f"  [{len(got)}/{len(pending)}] {unit['path']}: {rec['records_in']} records -> {rec['mags']} "
                f"MAGs, {rec['rejected']} rejected -> {sum(s['rows'] for s in rec['shards'])} rows, "
                f"{len(rec['shards'])} shard(s)")
        missing = [pending[k]["path"] for k in pending if k not in records]
        if missing:
            raise RuntimeError(f"preprocessing returned no shards for {missing}")
    manifest = build_manifest(head, [(path, records[key]) for path, _, _, key in inputs], out_dir=out_dir,
                              split=split, tokenizer=spec.tokenizer)
    report.manifest_changed = write_manifest(out_dir, manifest)
    report.totals = manifest["totals"]
    report.split = {k: v for k, v in manifest["split"].items() if k != "heldout"}
    report.seconds = time.perf_counter() - start
    log(report.line())
    return report
