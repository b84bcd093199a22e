"""End-to-end evaluation with a real tiny exported student: real benchmark and MAG files, summary
numbers recomputed from the per-question file, self-consistency, a 2-actor Ray run that must equal the
single-process run, logging to a real SQLite MLflow store and loading from its registry, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_support import tiny_student, write_synth_mags

from magdi_dist.eval.answers import extract_answer, majority_vote
from magdi_dist.eval.runner import EvalConfig, evaluate
from magdi_dist.eval.stats import wilson_interval
from magdi_dist.mag.grading import grade_answer

REPO = Path(__file__).resolve().parents[1]
BENCH = {
    "gsm8k": "gsm8k/test.jsonl",
    "strategyqa": "strategyqa/dev.json",
    "ecqa": "ecqa/cqa_data_test.csv",
    "arc": "arc_challenge/test.json",
    "aqua": "aqua/test.json",
}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return tiny_student(tmp_path_factory)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_synth_mags(tmp_path_factory.mktemp("synth") / "synth.jsonl", n=12, seed=7)


def _run(student, data, out, **kw) -> tuple[dict, list[dict]]:
    kw.setdefault("max_new_tokens", 12)
    summary = evaluate(EvalConfig(model=str(student), data=str(data), out=str(out), progress=False, **kw))
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return summary, records


def _without_latency(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "latency_s"} for r in records]


def _check_against_records(summary: dict, records: list[dict]) -> None:
    """Every summary number, recomputed from predictions.jsonl alone (answers re-extracted, votes
    re-cast, correctness re-graded)."""
    n = len(records)
    assert summary["n"] == n and [r["index"] for r in records] == list(range(n))
    for r in records:
        assert r["answers"] == [extract_answer(t) for t in r["samples"]]
        assert r["vote"] == majority_vote(r["task"], r["answers"], r["options"]).answer
        assert r["correct"] == (r["vote"] is not None and grade_answer(r["task"], r["vote"], r["gold"], r["options"]))
        assert r["generated_tokens"] == sum(r["sample_tokens"]) and len(r["samples"]) == summary["k"]
        assert all(0 <= t <= summary["max_new_tokens"] for t in r["sample_tokens"])
    correct = sum(r["correct"] for r in records)
    samples = [a for r in records for a in r["answers"]]
    assert summary["correct"] == correct
    assert summary["accuracy"] == pytest.approx(correct / n)
    assert (summary["ci95_low"], summary["ci95_high"]) == pytest.approx(wilson_interval(correct, n))
    assert summary["ci95_low"] <= summary["accuracy"] <= summary["ci95_high"]
    assert summary["extraction_failure_rate"] == pytest.approx(sum(a is None for a in samples) / len(samples))
    assert summary["tokens_per_question"] == pytest.approx(sum(r["generated_tokens"] for r in records) / n)
    assert summary["tokens_per_sample"] == pytest.approx(sum(r["generated_tokens"] for r in records) / len(samples))
    assert summary["latency_s_per_question"] == pytest.approx(sum(r["latency_s"] for r in records) / n)


@pytest.mark.parametrize("fmt", sorted(BENCH))
def test_benchmark_files(student, shared_data, tmp_path, fmt):
    summary, records = _run(student, shared_data / "benchmarks" / BENCH[fmt], tmp_path, limit=4, batch_size=3)
    assert summary["format"] == fmt and summary["n"] == 4
    _check_against_records(summary, records)
    first = records[0]
    assert first["question"] and first["gold"] and first["samples"][0]  # it generated something


def test_synthetic_mags_with_teacher_efficiency(student, synth, tmp_path):
    from transformers import AutoTokenizer

    from magdi_dist.mag.readers import read_mags

    summary, records = _run(student, synth, tmp_path, max_new_tokens=48, teachers=synth)
    _check_against_records(summary, records)
    assert summary["format"] == "mag" and summary["tasks"] == ["numeric"]
    assert summary["extraction_failure_rate"] < 0.5  # the student learned to end with "The answer is N."
    # Teachers' tokens recomputed here: every agent's reasoning in every round, student tokenizer.
    tok = AutoTokenizer.from_pretrained(student)
    mags = read_mags([synth]).mags
    teacher = [sum(len(tok(r.reasoning, add_special_tokens=False)["input_ids"]) for r in m.responses) for m in mags]
    eff = summary["efficiency"]
    assert eff["matched"] == 12 and eff["teacher_mags"] == 12
    assert eff["teacher_tokens_per_question"] == pytest.approx(sum(teacher) / 12)
    assert eff["student_tokens_per_question"] == pytest.approx(summary["tokens_per_question"])
    assert eff["teacher_to_student_ratio"] == pytest.approx(sum(teacher) / sum(r["generated_tokens"] for r in records))

    # Teachers for other questions: both averages, no ratio, and the summary says why.
    from magdi_dist.eval.efficiency import efficiency

    other = efficiency(REPO.parent / "shared/data/mag/magdi_layout/GSM8k_gpt4o_round_2.json", tok, records)
    assert other["matched"] == 0 and other["teacher_to_student_ratio"] is None
    assert other["teacher_tokens_per_question"] > 0 and "no question matched" in other["note"]
    assert other["student_tokens_per_question"] == pytest.approx(summary["tokens_per_question"])


def test_self_consistency_is_seeded_and_batch_independent(student, synth, tmp_path):
    kw = dict(k=4, temperature=1.0, max_new_tokens=40, limit=6, seed=3)
    summary, records = _run(student, synth, tmp_path / "a", batch_size=4, **kw)
    _check_against_records(summary, records)
    assert summary["samples"] == 24
    assert any(len(set(r["samples"])) > 1 for r in records)  # really sampled
    _, again = _run(student, synth, tmp_path / "b", batch_size=1, **kw)  # other batches, same seeds
    assert _without_latency(again) == _without_latency(records)
    _, other = _run(student, synth, tmp_path / "c", batch_size=4, **{**kw, "seed": 4})
    assert _without_latency(other) != _without_latency(records)
    with pytest.raises(ValueError, match="temperature > 0"):
        evaluate(EvalConfig(model=str(student), data=str(synth), k=3, progress=False))


@pytest.mark.slow
def test_two_ray_workers_reproduce_the_single_process_run(student, synth, tmp_path):
    """The sharded run goes through the Ray job entrypoint (ray_jobs/evaluate.py -> CLI -> actors) on a
    local Ray started here; inside a job the driver joins the job's cluster the same way."""
    import importlib.util

    import ray

    kw = dict(k=2, temperature=0.8, max_new_tokens=32, limit=8, batch_size=2, seed=11)
    single, single_records = _run(student, synth, tmp_path / "single", **kw)
    spec = importlib.util.spec_from_file_location("eval_job", REPO / "ray_jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = ["--model", str(student), "--data", str(synth), "--out", str(tmp_path / "ray"), "--workers", "2"]
    args += ["--no-progress", *[f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]]
    started = not ray.is_initialized()  # another test's cluster is reused, and left to its owner
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(SystemExit) as done:  # a Typer app exits like a command line
            job.main(args)
    finally:
        if started:
            ray.shutdown()
    assert done.value.code == 0
    sharded = json.loads((tmp_path / "ray" / "summary.json").read_text())
    sharded_records = [json.loads(line) for line in (tmp_path / "ray" / "predictions.jsonl").read_text().splitlines()]
    assert sharded["workers"] == 2 and sharded["ray_address"] == "auto"
    assert _without_latency(sharded_records) == _without_latency(single_records)
    for key in ("accuracy", "ci95_low", "ci95_high", "extraction_failure_rate", "tokens_per_question"):
        assert sharded[key] == single[key]


def test_mlflow_registry_model_and_run_logging(student, synth, tmp_path):
    from mlflow.tracking import MlflowClient

    from magdi_dist.track.registry import log_student, set_champion
    from magdi_dist.track.store import ensure_experiment

    # The registry's own path: the export logged as a pyfunc model, registered, aliased champion.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.create_run(ensure_experiment(uri, "eval-test")).info.run_id
    log_student(
        student, tracking_uri=uri, run_id=run_id, model_name="tiny-student", study="s", cell="c", rank=0,
        metrics={"loss": 1.0}, primary_metric="loss",
    )  # fmt: skip
    set_champion("tiny-student", "loss", tracking_uri=uri)

    summary = evaluate(
        EvalConfig(
            model="models:/tiny-student@champion",
            data=str(synth),
            limit=3,
            max_new_tokens=8,
            out=str(tmp_path / "out"),
            mlflow_run_id=run_id,
            tracking_uri=uri,
            progress=False,
        )
    )
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval/accuracy"] == pytest.approx(summary["accuracy"])
    assert metrics["eval/n"] == 3 and metrics["eval/ci95_high"] == pytest.approx(summary["ci95_high"])
    logged = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert logged == {"eval/predictions.jsonl", "eval/summary.json"}


def test_cli_json_via_subprocess(student, shared_data, tmp_path):
    cmd = [
        sys.executable, "-m", "magdi_dist.cli", "evaluate", "--model", str(student),
        "--data", str(shared_data / "benchmarks" / "gsm8k" / "test.jsonl"), "--limit", "3",
        "--max-new-tokens", "8", "--out", str(tmp_path / "out"), "--json", "--no-progress",
        "--teachers", str(shared_data / "mag" / "debate_du" / "gsm_3_2_100.json"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["n"] == 3 and summary["format"] == "gsm8k"
    assert summary["efficiency"]["matched"] == 3  # debate_du holds the first GSM8K test questions
    assert summary["efficiency"]["teacher_tokens_per_question"] > summary["tokens_per_question"]


def test_cli_reports_bad_input_with_exit_code_2(student, tmp_path):
    from typer.testing import CliRunner

    from magdi_dist.cli import app

    args = ["evaluate", "--model", str(student), "--data", str(tmp_path / "missing.jsonl")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "no such data file" in result.output
    result = CliRunner().invoke(app, [*args[:3], "--data", str(tmp_path), "--k", "3"])
    assert result.exit_code == 2 and "temperature > 0" in result.output
