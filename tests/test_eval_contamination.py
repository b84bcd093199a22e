"""Contamination excluded by construction (eval/contamination.py): the keys, the choice of questions,
and end to end: a tiny student trained (preprocess, DeepSpeed, export) on the shared GSM8K discussions
``gsm_3_2_100.json`` -- 100 GSM8K *test* questions -- and evaluated on GSM8K test without any
``--exclude`` asks exactly the 1,319 questions minus its training questions (the manifest's count),
says so as ``contamination_excluded`` in the summary and on the MLflow run, and ``--allow-contaminated``
asks them anyway with a warning. The training questions are recomputed here from the manifest's
held-out split keys and the debate file itself, not through the contamination keys under test."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from magdi_dist.eval.contamination import ContaminationError, Exclusion, check_evaluated, select, training_keys
from magdi_dist.eval.questions import EvalQuestion
from magdi_dist.mag.split import CONTAMINATION_RULE, contamination_key, question_key

REPO = Path(__file__).resolve().parents[1]


def _q(i: int, text: str) -> EvalQuestion:
    return EvalQuestion(i, f"q-{i}", "numeric", text, "1")


def test_the_contamination_key_ignores_case_punctuation_and_whitespace_and_the_split_key_does_not():
    a, b = "Janet has 3 ducks. How many?", "  janet HAS 3 ducks How many ??"
    assert contamination_key(a) == contamination_key(b) != contamination_key("Janet has 4 ducks. How many?")
    # The split's key stays the exact text's (whitespace aside): changing it would move held-out questions.
    assert question_key(a) == hashlib.sha256(a.encode()).hexdigest()[:16] != question_key(b)
    assert question_key("a  b\n c") == question_key("a b c")


def test_select_drops_trained_and_excluded_questions_and_counts_them():
    qs = [_q(0, "One?"), _q(1, "two"), _q(2, "Three."), _q(3, "four"), _q(4, "Five")]
    trained = frozenset({contamination_key("one"), contamination_key("THREE")})
    ex = Exclusion(trained, frozenset({contamination_key("four!")}))
    kept, counts = select(qs, ex, None)
    assert [q.id for q in kept] == ["q-1", "q-4"]
    assert (counts["contamination_excluded"], counts["excluded"], counts["contaminated"],
            counts["training_questions"]) == (2, 1, 0, 2)
    kept, counts = select(qs, ex, 1)  # the limit counts clean questions; the exclusions count all data
    assert [q.id for q in kept] == ["q-1"] and counts["contamination_excluded"] == 2
    allowed = Exclusion(trained, frozenset(), allow_contaminated=True)
    kept, counts = select(qs, allowed, 2)
    assert [q.id for q in kept] == ["q-0", "q-1"]
    assert (counts["contamination_excluded"], counts["contaminated"]) == (0, 1)
    assert len({e.digest() for e in (ex, allowed, Exclusion(None, frozenset()))}) == 3

    records = [{"id": q.id, "question": q.question} for q in qs]
    check_evaluated(qs, ex, None, records[1:2] + records[4:])
    with pytest.raises(ContaminationError, match=r"asked but excluded \['q-0'\]"):
        check_evaluated(qs, ex, None, records[:2] + records[4:])


def test_what_a_model_records_of_its_training(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert training_keys(plain) is None  # a model this project did not train: nothing of ours to drop
    export = tmp_path / "export"
    export.mkdir()
    (export / "graph_encoder.json").write_text("{}")
    with pytest.raises(ContaminationError, match="records no training questions"):
        training_keys(export)
    (export / "training_questions.json").write_text(json.dumps({"rule": "old", "keys": []}))
    with pytest.raises(ContaminationError, match="keys made by the rule 'old'"):
        training_keys(export)
    (export / "training_questions.json").write_text(json.dumps({"rule": CONTAMINATION_RULE, "keys": ["ab"]}))
    assert training_keys(export) == {"ab"}


# --- end to end --------------------------------------------------------------------------------------

# configs/tiny.yaml at test size, on the real discussions: a 1-layer 32-wide student, 2 steps.
SMALL = ["model.base={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
         "model.gcn_hidden=16", "data.max_len=96", "data.vocab_size=300", "train.max_steps=2", "train.save_every=0",
         "train.eval_every=0", "train.micro_batch_size=2", "train.warmup_steps=0", "train.progress=false",
         "train.peak_flops=1e12"]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("contamination")
    debate = shared_data / "mag" / "debate_du" / "gsm_3_2_100.json"
    cmd = [sys.executable, "-m", "magdi_dist.cli", "train", "--config", "configs/tiny.yaml", *SMALL,
           f"data.paths=[{debate}]", f"train.output_dir={out}", "--no-resume"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, debate


def _evaluate(*args: str) -> tuple[int, dict | None, str]:
    proc = subprocess.run([sys.executable, "-m", "magdi_dist.cli", "evaluate", *args, "--no-progress", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else None, proc.stderr


@pytest.mark.slow
def test_a_trained_student_is_never_evaluated_on_its_training_questions(trained, shared_data, tmp_path):
    from mlflow.tracking import MlflowClient

    run, debate = trained
    manifest = json.loads((run / "shards" / "manifest.json").read_text())
    split = manifest["split"]
    # Recomputed without contamination keys: the file's questions whose split key is not held out.
    held = set(split["heldout"])
    texts = list(json.loads(debate.read_text()))
    training = {" ".join(t.split()) for t in texts if question_key(t) not in held}
    assert len(training) == split["questions"] - split["heldout_questions"] == 90  # the manifest's count
    assert json.loads((run / "export" / "training_questions.json").read_text())["questions"] == 90

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("contamination")).info.run_id
    gsm8k = shared_data / "benchmarks" / "gsm8k" / "test.jsonl"
    out = tmp_path / "eval"
    code, summary, err = _evaluate("--model", str(run / "export"), "--data", str(gsm8k), "--max-new-tokens", "4",
                                   "--batch-size", "64", "--out", str(out), "--mlflow-run-id", run_id,
                                   "--tracking-uri", uri)
    assert code == 0, err[-3000:]
    assert (summary["n"], summary["contamination_excluded"], summary["training_questions"]) == (1319 - 90, 90, 90)
    asked = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(asked) == 1229 and not {" ".join(r["question"].split()) for r in asked} & training
    assert client.get_run(run_id).data.metrics["eval/contamination_excluded"] == 90

    code, allowed, err = _evaluate("--model", str(run / "export"), "--data", str(gsm8k), "--max-new-tokens", "2",
                                   "--limit", "40", "--allow-contaminated", "--out", str(tmp_path / "allowed"))
    first40 = [json.loads(line)["question"] for line in gsm8k.read_text().splitlines()[:40]]
    expected = sum(" ".join(q.split()) in training for q in first40)
    assert code == 0 and expected > 0 and "--allow-contaminated" in err
    assert (allowed["n"], allowed["contamination_excluded"], allowed["contaminated"]) == (40, 0, expected)


@pytest.mark.slow
def test_reuse_compares_the_excluded_questions_not_the_files(trained, shared_data, tmp_path):
    from magdi_dist.recipes.evaluate import EvalConfig, check_clean, evaluate

    run, debate = trained
    gsm8k = shared_data / "benchmarks" / "gsm8k" / "test.jsonl"
    extra = shared_data / "mag" / "magdi_layout" / "GSM8k_gpt4o_round_2.json"
    copy = tmp_path / "copy.json"
    shutil.copy(extra, copy)
    kw = {"model": str(run / "export"), "data": str(gsm8k), "limit": 10, "max_new_tokens": 2, "progress": False,
          "out": str(tmp_path / "eval"), "reuse": True}
    first = evaluate(EvalConfig(**kw, exclude=[str(extra)]))
    check_clean(EvalConfig(**kw, exclude=[str(extra)]), first)
    assert first["contamination_excluded"] == 90 and first["excluded"] > 0
    again = evaluate(EvalConfig(**kw, exclude=[str(copy)]))  # another path, the same questions: reused
    assert again["wall_s"] == first["wall_s"] and again["excluded_from"] == [str(extra)]
    fresh = evaluate(EvalConfig(**kw))  # other exclusions: run again
    assert fresh["wall_s"] != first["wall_s"] and fresh["excluded"] == 0
    # The study's check of a cell against another config's questions (the first 10 include trained ones).
    with pytest.raises(ContaminationError, match=r"asked but excluded \['gsm8k-30'"):
        check_clean(EvalConfig(**kw, allow_contaminated=True), fresh)
