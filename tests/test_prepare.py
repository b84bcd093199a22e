"""A run config drives preprocessing: ``prepare_data`` materialises the synthetic inputs, trains the
tokenizer on the training questions only, writes the shards once and records the held-out split in a
manifest whose paths are relative to itself; ``load_train_data`` splits the rows by that record.
Output paths resolve against a storage root. Plus the job-submission helpers that need no cluster."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from magdi_dist.config import ConfigError, durable_path, load_config, with_durable_outputs
from magdi_dist.data.shards import ShardDataset, load_train_data
from magdi_dist.launch.jobs import build_runtime_env, entrypoint
from magdi_dist.preprocess.manifest import load_manifest
from magdi_dist.preprocess.prepare import prepare_data, resolve

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
    manifest = prepare_data(cfg, engine="local", log=lines.append).manifest
    return cfg, out, manifest, lines


def test_prepare_builds_once_from_the_config(config_run):
    cfg, out, manifest, lines = config_run
    assert manifest == out / "shards" / "manifest.json"
    assert (out / "shards" / "tokenizer" / "tokenizer.json").is_file()  # the dataset carries its tokenizer
    data = load_manifest(manifest)
    assert data["totals"]["mags"] == 30 and data["feature_dim"] == 32
    # Paths inside the folder are relative to the manifest: the same bytes from every entry point.
    assert data["inputs"][0]["path"] == "inputs/synthetic-n30-a3-r2-s0.jsonl"
    assert data["tokenizer"] == "tokenizer" and data["config"]["features"]["tokenizer"] == "tokenizer"
    assert str(out) not in manifest.read_text()
    assert any("training a 300-token tokenizer" in line for line in lines)
    again: list[str] = []
    before = manifest.read_bytes()
    assert prepare_data(cfg, engine="local", log=again.append).manifest == manifest
    assert "nothing to do" in again[-1] and not any("tokenizer" in line for line in again)
    assert manifest.read_bytes() == before


def test_settings_follow_the_config(config_run, tmp_path):
    cfg, out, _, _ = config_run
    pre, spec = resolve(cfg)
    assert pre.out_dir == str(out / "shards") and spec.tokenizer == str(out / "shards" / "tokenizer")
    assert spec.rows["max_length"] == 96 and spec.pooling == cfg.model.pooling
    data_file = tmp_path / "teachers.jsonl"
    data_file.write_text("")
    other = load_config(TINY, [f"data.paths=[{data_file}]", "data.tokenizer=/some/dir"])
    pre, spec = resolve(other)
    assert pre.inputs == [str(data_file)] and spec.tokenizer == "/some/dir"


def test_rows_split_by_the_manifests_record(config_run):
    cfg, _, manifest, _ = config_run
    data = load_train_data(manifest)
    record = load_manifest(manifest)["split"]
    every = list(ShardDataset(manifest))
    held_chains = [(r["mag_id"], r["pos_node"]) for r in every if r["question_key"] in set(record["heldout"])]
    assert len(data.train) + len(held_chains) == len(every) and len(data.eval) > 0
    # Held out: each correct chain once (it is the positive of every pair it is in).
    assert [(r["mag_id"], r["pos_node"]) for r in data.eval] == list(dict.fromkeys(held_chains))
    assert (record["eval_fraction"], record["seed"], record["questions"]) == (0.2, 0, 30)
    assert record["heldout_questions"] == len(record["heldout"]) > 0
    # Independently of the split code: held-out rows are exactly those of the recorded questions, and
    # no question text is on both sides.
    held = set(record["heldout"])
    assert {r["question_key"] for r in data.eval} <= held and not {r["question_key"] for r in data.train} & held
    assert not {r["mag_id"] for r in data.train} & {r["mag_id"] for r in data.eval}
    assert data.lengths() == [max(len(r["pos_input_ids"]), len(r["neg_input_ids"]) or 1) for r in data.train]
    assert data.tokenizer == str(manifest.parent / "tokenizer")


def test_a_moved_dataset_still_loads(config_run, tmp_path):
    _, out, manifest, _ = config_run
    moved = tmp_path / "elsewhere" / "shards"
    shutil.copytree(out / "shards", moved)
    data, before = load_train_data(moved), load_train_data(manifest)
    assert data.tokenizer == str(moved / "tokenizer")
    assert [r["pos_input_ids"] for r in data.train] == [r["pos_input_ids"] for r in before.train]


def test_tokenizer_never_sees_a_held_out_question(tmp_path):
    """Each question carries its own made-up word, repeated: a BPE trained on a question learns that
    word as one token. The held-out questions' words must stay split into pieces."""
    from transformers import AutoTokenizer

    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags

    def word(i: int) -> str:  # a distinct word per question: i in base 14, each digit a syllable
        return "".join("bdfgklmnprstvz"[(i // 14**k) % 14] + "aeiou"[k] for k in range(3)) + "x"

    mags = [m.model_copy(update={"question": f"{(word(i) + ' ') * 12}{m.question}"})
            for i, m in enumerate(synth_mags(40, rounds=2, seed=3))]
    data = tmp_path / "words.jsonl"
    write_mags_jsonl(mags, data)
    cfg = load_config(TINY, [*SMALL, f"data.paths=[{data}]", "data.vocab_size=2000", "data.eval_fraction=0.25",
                             f"train.output_dir={tmp_path / 'run'}"])
    manifest = prepare_data(cfg, engine="local", log=lambda _m: None).manifest
    held = set(load_manifest(manifest)["split"]["heldout"])
    tok = AutoTokenizer.from_pretrained(manifest.parent / "tokenizer")
    rows = load_train_data(manifest)
    key_of = {r["mag_id"]: r["question_key"] for part in (rows.train, rows.eval) for r in part}
    pieces = {i: len(tok(" " + word(i), add_special_tokens=False)["input_ids"]) for i in range(len(mags))}
    held_out = [i for i, m in enumerate(mags) if key_of.get(m.id) in held]
    trained = [i for i, m in enumerate(mags) if m.id in key_of and key_of[m.id] not in held]
    assert held_out and trained
    assert all(pieces[i] == 1 for i in trained), pieces
    assert all(pieces[i] > 1 for i in held_out), pieces


def test_outputs_resolve_against_the_storage_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MAGDI_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert durable_path("runs/x") == str(tmp_path / "runs" / "x")
    assert durable_path("/abs/x", "/elsewhere") == "/abs/x"
    monkeypatch.setenv("MAGDI_STORAGE", str(tmp_path / "store"))
    assert durable_path("runs/x") == str(tmp_path / "store" / "runs" / "x")
    assert durable_path("runs/x", tmp_path / "flag") == str(tmp_path / "flag" / "runs" / "x")  # the flag wins
    cfg = with_durable_outputs(load_config(TINY, ["preprocess.out_dir=data/shards"]))
    assert cfg.train.output_dir == str(tmp_path / "store" / "runs" / "tiny")
    assert cfg.preprocess.out_dir == str(tmp_path / "store" / "data" / "shards")
    # Inside the working-dir copy Ray unpacks for a submitted job, a relative output path with no
    # storage root is refused: Ray deletes that folder.
    monkeypatch.delenv("MAGDI_STORAGE")
    job_copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job_copy.mkdir(parents=True)
    monkeypatch.chdir(job_copy)
    with pytest.raises(ConfigError, match="--storage DIR or MAGDI_STORAGE"):
        with_durable_outputs(load_config(TINY))
    assert durable_path("runs/x", "/shared") == "/shared/runs/x"
    assert os.environ.get("MAGDI_STORAGE") is None


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


def test_one_feature_model_gives_every_size_the_same_shards(tmp_path):
    """model.feature_model: students of different sizes get identical node features (and shards),
    of the feature model's width; without it each size's shards carry its own base's features."""
    sizes = ["{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
             "{hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128}"]
    feature = ("model.feature_model="
               "{hidden_size: 48, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 96}")
    manifests = {}
    for fixed in (True, False):
        for i, base in enumerate(sizes):
            cfg = load_config(TINY, [*SMALL, f"model.base={base}", *([feature] if fixed else []),
                                     f"train.output_dir={tmp_path / f'{fixed}-{i}'}"])
            manifests[fixed, i] = load_manifest(prepare_data(cfg, engine="local", log=lambda _m: None).manifest)
    same = [manifests[True, i] for i in range(2)]
    assert same[0]["feature_dim"] == same[1]["feature_dim"] == 48
    assert [s["sha256"] for s in same[0]["shards"]] == [s["sha256"] for s in same[1]["shards"]]
    own = [manifests[False, i] for i in range(2)]
    assert [m["feature_dim"] for m in own] == [32, 64] and own[0]["fingerprint"] != own[1]["fingerprint"]
    with pytest.raises(ConfigError, match="feature_model is for frozen"):
        load_config(TINY, [feature, "model.graph_features=live"])


def test_max_mags_takes_the_first_mags_of_the_sorted_inputs(tmp_path, shared_data):
    from magdi_dist.mag.readers import read_mags

    debates = sorted((shared_data / "mag" / "debate_du").glob("gsm*.json"))[:2]
    files = "[" + ", ".join(str(p) for p in reversed(debates)) + "]"  # the order typed does not matter
    cfg = load_config(None, [f"data.paths={files}", "data.max_mags=103", f"train.output_dir={tmp_path}",
                             "model.base=tiny-1m", "data.features=zero"])
    report = prepare_data(cfg)
    assert report.totals["mags"] == 103 and report.totals["records_in"] == 103
    (subset,) = (tmp_path / "shards" / "inputs").glob("first103-*.jsonl")
    first = read_mags([debates[0]]).mags  # 100 MAGs, then 3 of the second file
    expected = [m.question for m in first] + [m.question for m in read_mags([debates[1]]).mags[:3]]
    assert [m.question for m in read_mags([subset]).mags] == expected
    stamp = subset.stat().st_mtime_ns
    assert prepare_data(cfg).processed == [] and subset.stat().st_mtime_ns == stamp  # cut once


def test_teacher_files_are_checked_where_they_are_read_not_where_a_config_loads(tmp_path, shared_data, monkeypatch):
    """A config loads anywhere (a capacity plan, a rank, a Ray worker never read teacher files); the
    preparation that reads them names the key and the file when one is missing, before writing."""
    monkeypatch.chdir(shared_data.parent)
    rel = "data/mag/magdi_layout/GSM8k_gpt4o_round_2.json"
    cfg = load_config(None, [f"data.paths=[{rel}]", f"train.output_dir={tmp_path / 'run'}"])
    monkeypatch.chdir(tmp_path)  # another working dir: the relative path names nothing here
    assert type(cfg).model_validate(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(ConfigError, match=f"data.paths: data file not found: {rel}"):
        prepare_data(cfg)
    assert not (tmp_path / "run").exists()
