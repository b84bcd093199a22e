"""A run config drives preprocessing: ``ensure_shards`` materialises the synthetic inputs, trains the
tokenizer where the loop would look for it, writes the shards once, and ``train_data_from_shards``
splits the rows by question. Plus the job-submission helpers that need no cluster. No Ray here."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from magdi_dist.config import load_config
from magdi_dist.launch.jobs import build_runtime_env, entrypoint
from magdi_dist.launch.shards import ensure_shards, resolve, train_data_from_shards
from magdi_dist.preprocess.manifest import load_manifest

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
SMALL = [
    "model.base={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
    "model.gcn_hidden=16", "data.synthetic.n=30", "data.synthetic.rounds=2", "data.max_len=96",
    "data.vocab_size=300", "data.eval_fraction=0.2",
]  # fmt: skip


@pytest.fixture(scope="module")
def config_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cfg") / "run"
    cfg = load_config(TINY, [*SMALL, f"train.output_dir={out}"])
    lines: list[str] = []
    manifest = ensure_shards(cfg, engine="local", log=lines.append)
    return cfg, out, manifest, lines


def test_ensure_shards_builds_once_from_the_config(config_run):
    cfg, out, manifest, lines = config_run
    assert manifest == out / "shards" / "manifest.json"
    assert (out / "tokenizer" / "tokenizer.json").is_file()  # where train.data.tokenizer_for reads it
    data = load_manifest(manifest)
    assert data["totals"]["mags"] == 30 and data["feature_dim"] == 32
    assert data["inputs"][0]["path"].endswith("synthetic-n30-a3-r2-s0.jsonl")
    assert any("training a 300-token tokenizer" in line for line in lines)
    again: list[str] = []
    before = manifest.read_bytes()
    assert ensure_shards(cfg, engine="local", log=again.append) == manifest
    assert "nothing to do" in again[-1] and not any("tokenizer" in line for line in again)
    assert manifest.read_bytes() == before


def test_settings_follow_the_config(config_run, tmp_path):
    cfg, out, _, _ = config_run
    settings, spec = resolve(cfg)
    assert settings.out_dir == str(out / "shards") and spec.tokenizer == str(out / "tokenizer")
    assert spec.rows["max_length"] == 96 and spec.pooling == cfg.model.pooling
    data_file = tmp_path / "teachers.jsonl"
    data_file.write_text("")
    other = load_config(TINY, [f"data.paths=[{data_file}]", "data.tokenizer=/some/dir"])
    settings, spec = resolve(other)
    assert settings.inputs == [str(data_file)] and spec.tokenizer == "/some/dir"


def test_train_data_splits_rows_by_question(config_run):
    cfg, _, manifest, _ = config_run
    data = train_data_from_shards(cfg, manifest)
    total = load_manifest(manifest)["totals"]["rows"]
    assert len(data.train) + len(data.eval) == total and len(data.eval) > 0
    train_q = {(r["source_file"], r["source_record"]) for r in data.train}
    eval_q = {(r["source_file"], r["source_record"]) for r in data.eval}
    assert not train_q & eval_q  # no question leaks from the held-out split into training
    assert data.lengths() == [max(len(r["pos_input_ids"]), len(r["neg_input_ids"]) or 1) for r in data.train]
    again = train_data_from_shards(cfg, manifest)
    assert [r["mag_id"] for r in again.eval] == [r["mag_id"] for r in data.eval]


def test_job_entrypoint_and_runtime_env(tmp_path):
    repo = tmp_path / "repo"
    (repo / "ray_jobs").mkdir(parents=True)
    (repo / "ray_jobs" / "train.py").write_text("")
    (repo / "ray_jobs" / "runtime_env.yaml").write_text("excludes: [runs/]\nenv_vars: {A: '1'}\n")
    (repo / "configs").mkdir()
    (repo / "configs" / "my config.yaml").write_text("")
    cmd = entrypoint("train", repo / "configs" / "my config.yaml", repo, ["--workers", "2", "train.lr=1e-3"])
    assert shlex.split(cmd) == ["python", "ray_jobs/train.py", "--config", "configs/my config.yaml",
                                "--workers", "2", "train.lr=1e-3"]
    with pytest.raises(ValueError, match="outside the working dir"):
        entrypoint("train", tmp_path / "elsewhere.yaml", repo, [])
    with pytest.raises(ValueError, match="unknown job"):
        entrypoint("nope", repo / "configs" / "my config.yaml", repo, [])
    env = build_runtime_env(repo, {"B": "2"})
    assert env == {"excludes": ["runs/"], "env_vars": {"A": "1", "B": "2"}, "working_dir": str(repo)}
    json.dumps(env)  # what the job SDK sends must be plain JSON
