"""The two stages of the pipeline, as a plain function and a class, so Ray Data (``flat_map`` ->
``map_batches`` actor pool) and the single-process engine run exactly the same code.

parse_unit      one input file -> graded MAGs, a rejects file, and one row per shard (a fixed split of
                the file: ``records_per_shard`` MAGs each) carrying the MAGs as JSON. Light: readers and
                grading only, so these tasks start fast and never import torch.
ShardBuilder    frozen base-student node features, contrastive pair rows and tokens for one shard, then
                the Parquet file, written atomically; returns the shard's summary to the driver. An
                actor pool: each actor loads the tokenizer and model once (GPU when the cluster has one).
                Rows and the write live in the actor too, because a separate task stage would start
                more processes that each import torch and transformers again -- on a small node that
                start-up costs more than the work.

A row between the stages is a whole shard, never a single MAG: a shard's features are then computed in
one call, batched in an order fixed by its content, which is what makes shard hashes reproducible.

Shards kept in object storage (a unit's ``store``: the shards folder's URI, launch/stage.py): a task or
actor may run on any node, and the driver's folder is on the driver's disk, so each writes its files
(shards, rejects) into its own node's mirror of that folder and puts them into the store, and asks the
store which shards already exist.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from magdi_dist import storage
from magdi_dist.mag.schema import MAG
from magdi_dist.preprocess.featurize import (
    FeatureSpec,
    MemoTokenizer,
    build_rows,
    feature_extractor,
    load_feature_model,
    load_tokenizer,
)
from magdi_dist.preprocess.inputs import input_file
from magdi_dist.preprocess.manifest import REJECTS, SHARDS, rejects_name, shard_name
from magdi_dist.preprocess.shard_io import atomic_write_jsonl, shard_summary, sort_rows, write_shard

# What the builder hands back per shard. Fixed, so summaries of every shard stack into one block.
SUMMARY_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("chunk", pa.int64()),
        ("n_chunks", pa.int64()),
        ("records_in", pa.int64()),
        ("n_mags", pa.int64()),
        ("n_rejected", pa.int64()),
        ("existing", pa.bool_()),
        ("name", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("questions", pa.list_(pa.string())),
        ("contamination", pa.list_(pa.string())),  # contamination key of questions[i], aligned
        ("cleaning", pa.struct([("chains", pa.int64()), ("changed", pa.int64()), ("chars_removed", pa.int64())])),
    ]
)


def _renamed(mag: MAG, name: str) -> MAG:
    """Provenance carries the file *name*: the unit key covers the name, not the directory, so moving
    the inputs keeps their shards while every row still leads back to its file and record."""
    if mag.source is None:
        return mag
    return mag.model_copy(update={"source": mag.source.model_copy(update={"file": name})})


def node_folder(unit: dict[str, Any]) -> Path:
    """Where this process writes a unit's files: the driver's folder, or for shards kept in object
    storage this node's mirror of the store's folder."""
    return storage.local_mirror(unit["store"]) if unit.get("store") else Path(unit["out_dir"])


def _keep(unit: dict[str, Any], local: Path, rel: str) -> None:
    """A file this process wrote into ``node_folder``, put into the store too (when there is one)."""
    if unit.get("store"):
        storage.put_file(local, storage.join(unit["store"], rel))


def on_this_node(unit: dict[str, Any], path: str) -> str:
    """``path`` as this process can read it: a file or folder the driver wrote into its folder (a
    synthetic input, a trained tokenizer) comes down from the store into this node's mirror, once."""
    out_dir = unit["out_dir"].rstrip("/") + "/"
    if not unit.get("store") or not str(path).startswith(out_dir):
        return path
    rel = str(path)[len(out_dir):]
    target = node_folder(unit) / rel
    if not target.exists():
        uri = storage.join(unit["store"], rel)
        if storage.is_file(uri):
            storage.pull_tree(storage.join(unit["store"], str(Path(rel).parent)), target.parent, only=(target.name,))
        else:
            storage.pull_tree(uri, target)
    return str(target)


def _exists(unit: dict[str, Any], rel: str) -> bool:
    if unit.get("store"):
        return storage.is_file(storage.join(unit["store"], rel))
    return (Path(unit["out_dir"]) / rel).is_file()


def parse_unit(unit: dict[str, Any], *, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One input file -> its shard rows (``flat_map``). Shards already on disk travel as empty rows
    marked ``existing`` (the writer only re-reads their summary): a re-run after a crash redoes only
    the shards that never got renamed into place. ``settings``: the ``preprocess`` section's fields
    plus the reader's ``format`` and ``task``."""
    from magdi_dist.mag.clean import CleanStats, clean_mag
    from magdi_dist.mag.readers import iter_items
    from magdi_dist.mag.split import contamination_key, question_key

    per_shard = settings["records_per_shard"]
    folder, name, key = node_folder(unit), unit["name"], unit["unit"]
    mags: list[MAG] = []
    rejects: list[dict] = []
    records_in = 0
    patterns = tuple(settings["clean_patterns"])
    cleaning = CleanStats()
    source = input_file(on_this_node(unit, unit["path"]))
    for item in iter_items(source, format=settings["format"], task=settings["task"]):
        records_in += 1
        if isinstance(item, MAG):
            if patterns:  # before rows, features and the split see the text
                item, stats = clean_mag(item, patterns)
                cleaning.add(stats)
            mags.append(_renamed(item, name))
            continue
        if settings["strict"]:
            raise item.error
        entry = item.as_dict()
        entry["file"] = name
        rejects.append(entry)
    if rejects:
        rel = f"{REJECTS}/{rejects_name(key)}"
        atomic_write_jsonl(folder / rel, rejects)
        _keep(unit, folder / rel, rel)
    # Every input gets at least one shard (maybe empty), so every input reports back to the driver.
    n_chunks = max(1, math.ceil(len(mags) / per_shard))
    rows = []
    for c in range(n_chunks):
        shard = shard_name(key, c)
        existing = _exists(unit, f"{SHARDS}/{shard}")
        chunk = mags[c * per_shard : (c + 1) * per_shard]
        # One text gives one split key and one contamination key: sorting the pairs keeps them aligned.
        keys = sorted({(question_key(m.question), contamination_key(m.question)) for m in chunk})
        rows.append({
            "unit": key,
            "out_dir": unit["out_dir"],
            "store": unit.get("store"),
            "shard": shard,
            "chunk": c,
            "n_chunks": n_chunks,
            "records_in": records_in,
            "n_mags": len(mags),
            "n_rejected": len(rejects),
            "existing": existing,
            # The split is over every question, including those whose MAGs give no row.
            "questions": [k for k, _ in keys],
            "contamination": [c for _, c in keys],
            "cleaning": cleaning.as_dict(),
            "mags": [] if existing else [m.model_dump_json() for m in chunk],
        })
    return rows


class ShardBuilder:
    """Callable class for ``map_batches``: features, rows and the Parquet write of whole shards."""

    def __init__(self, spec: dict[str, Any], settings: dict[str, Any], device: str = "cpu") -> None:
        import torch

        self.settings = settings
        self.spec = FeatureSpec(**{**spec, "tokenizer": on_this_node(settings, spec["tokenizer"])})
        # Part of the fingerprint: the same thread count in every actor and every run.
        torch.set_num_threads(settings["torch_threads"])
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the pipeline was planned for GPU features but this actor sees no GPU")
        # Features and rows tokenize the same node texts (and every node repeats its question):
        # one memo, cleared per shard, serves both.
        self.tokenizer = MemoTokenizer(load_tokenizer(self.spec.tokenizer))
        model = load_feature_model(self.spec, device)
        self.extract = feature_extractor(self.spec, model, self.tokenizer, batch_size=settings["feature_batch_size"],
                                         device=device)
        self.node_ids = self.spec.rows.get("node_max_tokens", 0) > 0

    def build(self, row: dict[str, Any]) -> dict[str, Any]:
        """One shard row -> its Parquet file (unless already there) -> its summary."""
        from magdi_dist.data.rows import ready_mag

        rel = f"{SHARDS}/{row['shard']}"
        path = node_folder(row) / rel
        self.tokenizer.clear()
        if row["existing"]:
            if not path.is_file():  # in the store, written from another node
                storage.pull_tree(storage.join(row["store"], SHARDS), path.parent, only=(row["shard"],))
            summary = shard_summary(path)
        else:
            # The completed grid: the node set the rows and the graph use (missing nodes included).
            mags = [ready_mag(MAG.model_validate_json(text)) for text in row["mags"]]
            rows = build_rows(mags, self.extract(mags), self.tokenizer, self.spec)
            summary = write_shard(path, sort_rows(rows), self.settings["row_group_rows"],
                                  node_ids=self.node_ids)
            _keep(row, path, rel)
        keep = ("unit", "chunk", "n_chunks", "records_in", "n_mags", "n_rejected", "existing", "questions",
                "contamination", "cleaning")
        return {**{k: row[k] for k in keep}, **summary}

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.build(row) for row in batch.to_pylist()], schema=SUMMARY_SCHEMA)
