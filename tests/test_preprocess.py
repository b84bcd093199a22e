"""Preprocessing without Ray (the single-process engine runs the very same stage functions): shards are
deterministic, re-runs are free and leave the manifest untouched, new inputs are processed alone,
bad records are accounted for, a crash mid-run resumes to identical bytes, and training reads rows."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from ray_cluster import tiny_feature_spec, write_synth_inputs

from magdi_dist.config import PreprocessConfig
from magdi_dist.data.shards import ShardDataset
from magdi_dist.preprocess import stages
from magdi_dist.preprocess.manifest import load_manifest, verify_manifest
from magdi_dist.preprocess.pipeline import run_preprocess


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    spec = tiny_feature_spec(root)
    write_synth_inputs(root / "in", {"a.jsonl": (24, 1), "b.jsonl": (10, 2)})
    return root, spec


def settings(out, *inputs, **kw) -> PreprocessConfig:
    return PreprocessConfig(inputs=[str(i) for i in inputs], out_dir=str(out), records_per_shard=16, **kw)


def run(cfg, spec, log=None, **kw):
    return run_preprocess(cfg, spec, engine="local", log=log or (lambda _msg: None), **kw)


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    """One uninterrupted run over both inputs: the bytes every other path must reproduce."""
    root, spec = assets
    out = tmp_path_factory.mktemp("ref")
    run(settings(out, root / "in" / "*.jsonl"), spec)
    return out


def shard_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def test_same_inputs_same_bytes_and_rerun_is_free(assets, reference, tmp_path):
    root, spec = assets
    manifest = load_manifest(reference)
    assert manifest["totals"] == {"inputs": 2, "records_in": 34, "mags": 34, "rejected": 0, "shards": 3,
                                  "rows": manifest["totals"]["rows"], "chains_cleaned": 0, "chars_removed": 0}
    assert [len(i["shards"]) for i in manifest["inputs"]] == [2, 1]  # 24 MAGs at 16 per shard: a fixed split
    assert verify_manifest(reference) == []
    # Same inputs elsewhere: byte-identical shards and manifest (no timestamps, paths are the inputs').
    run(settings(tmp_path, root / "in" / "*.jsonl"), spec)
    assert (tmp_path / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    assert shard_bytes(tmp_path) == shard_bytes(reference)
    # Re-run: no work, says so, manifest untouched (bytes and mtime).
    before = (tmp_path / "manifest.json").stat().st_mtime_ns
    lines: list[str] = []
    report = run(settings(tmp_path, root / "in" / "*.jsonl"), spec, log=lines.append)
    assert report.processed == [] and len(report.skipped) == 2 and not report.manifest_changed
    assert "nothing to do" in lines[-1]
    assert (tmp_path / "manifest.json").stat().st_mtime_ns == before


def test_adding_a_file_processes_only_that_file(assets, reference, tmp_path):
    root, spec = assets
    run(settings(tmp_path, root / "in" / "a.jsonl"), spec)
    a_shards = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()}
    report = run(settings(tmp_path, root / "in" / "*.jsonl"), spec)
    assert [os.path.basename(p) for p in report.processed] == ["b.jsonl"]
    assert all((tmp_path / "shards" / n).stat().st_mtime_ns == t for n, t in a_shards.items())
    ref = load_manifest(reference)
    got = load_manifest(tmp_path)
    assert got["shards"] == ref["shards"] and got["totals"] == ref["totals"]


def test_a_changed_setting_or_input_is_a_new_key(assets, reference, tmp_path):
    root, spec = assets
    shutil.copytree(reference, tmp_path / "out")
    report = run(settings(tmp_path / "out", root / "in" / "*.jsonl", feature_batch_size=7), spec)
    assert len(report.processed) == 2  # batching shapes the feature floats, so it is content
    changed = tmp_path / "in"
    write_synth_inputs(changed, {"a.jsonl": (24, 1)})
    with (changed / "a.jsonl").open("a") as fh:  # one more record: new bytes, new key
        fh.write((root / "in" / "b.jsonl").read_text().splitlines()[0] + "\n")
    report = run(settings(tmp_path / "out", changed / "a.jsonl"), spec)
    assert len(report.processed) == 1


def test_bad_records_go_to_rejects_and_are_counted(assets, tmp_path):
    root, spec = assets
    good = (root / "in" / "b.jsonl").read_text().splitlines()
    bad = json.loads(good[1])
    bad["task"] = "poetry"
    lines = [good[0], "{not json", json.dumps(bad), good[2]]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    report = run(settings(tmp_path / "out", tmp_path / "mixed.jsonl"), spec)
    assert report.totals["records_in"] == 4 and report.totals["mags"] == 2 and report.totals["rejected"] == 2
    entry = load_manifest(tmp_path / "out")["inputs"][0]
    rejects = [json.loads(x) for x in (tmp_path / "out" / entry["rejects_file"]).read_text().splitlines()]
    assert [r["index"] for r in rejects] == [1, 2]
    assert all(r["reason"] and r["file"] == "mixed.jsonl" for r in rejects)
    assert "task" in rejects[1]["reason"] or rejects[1]["field"] == "task"
    from magdi_dist.mag.errors import MAGInputError

    with pytest.raises(MAGInputError, match="record 1"):
        run(settings(tmp_path / "strict", tmp_path / "mixed.jsonl", strict=True), spec)


class Killed(BaseException):
    pass


def test_crash_mid_run_resumes_to_identical_bytes(assets, reference, tmp_path, monkeypatch):
    root, spec = assets
    cfg = settings(tmp_path, root / "in" / "*.jsonl")
    real_build = stages.ShardBuilder.build
    written = []

    def crash_after_first_shard(self, row):
        if written:
            raise Killed  # a kill lands between two shards
        written.append(row["shard"])
        return real_build(self, row)

    monkeypatch.setattr(stages.ShardBuilder, "build", crash_after_first_shard)
    with pytest.raises(Killed):
        run(cfg, spec)
    monkeypatch.undo()
    assert not (tmp_path / "manifest.json").exists()
    first = tmp_path / "shards" / written[0]
    inode = first.stat().st_ino
    stale = tmp_path / "shards" / f".{written[0]}.tmp-1-dead"
    stale.write_bytes(b"half a shard")  # what a writer killed before its rename leaves
    run(cfg, spec)
    assert first.stat().st_ino == inode  # the finished shard was kept, not rebuilt
    assert not stale.exists()
    assert (tmp_path / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    assert verify_manifest(tmp_path) == []


def test_training_reads_rows_disjoint_per_rank(assets, reference):
    from magdi_dist.data import collate
    from magdi_dist.data.rows import RowConfig, rows_from_mags, zero_features
    from magdi_dist.mag.readers import read_mags
    from magdi_dist.preprocess.featurize import load_tokenizer

    root, spec = assets
    data = ShardDataset(reference, verify=True)
    manifest = load_manifest(reference)
    assert len(data) == manifest["totals"]["rows"] and data.feature_dim == manifest["feature_dim"] == 32
    # Rows are the contract's rows: the token ids equal an in-memory build from the same MAGs.
    mags = read_mags(sorted((root / "in").glob("*.jsonl"))).mags
    expected = rows_from_mags(mags, load_tokenizer(spec.tokenizer), RowConfig(**spec.rows), zero_features(32))
    assert [(r["mag_id"], r["pos_input_ids"], r["neg_input_ids"]) for r in data] == [
        (r["mag_id"], r["pos_input_ids"], r["neg_input_ids"]) for r in expected
    ]
    row = data[0]
    assert set(row) == set(expected[0]) and row["source_file"] == "a.jsonl"
    assert len(row["node_features"]) == len(row["node_labels"]) * 32 and any(row["node_features"])
    assert data.lengths[:3] == [max(len(r["pos_input_ids"]), len(r["neg_input_ids"]) or 1) for r in expected[:3]]
    parts = [data.partition(r, 3) for r in range(3)]
    ids = [[(x["mag_id"], x["pair_index"]) for x in p] for p in parts]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(data) // 3
    assert not set(ids[0]) & set(ids[1]) and not set(ids[1]) & set(ids[2])
    assert ids == [[(x["mag_id"], x["pair_index"]) for x in data.partition(r, 3)] for r in range(3)]
    batch = collate([data[i] for i in range(4)], pad_id=0)
    assert batch["input_ids"].shape[0] == 8 and batch["graph"].x.shape[1] == 32
