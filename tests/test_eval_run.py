"""End-to-end evaluation with a real tiny exported student: real benchmark and MAG files, summary
numbers recomputed from the per-question file, self-consistency, a 2-actor Ray run that must equal the
single-process run, logging to a real SQLite MLflow store and loading from its registry, the CLI."""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_support import tiny_student, write_synth_mags

from magdi_dist.recipes.evaluate import EvalConfig, evaluate

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


# --- an independent reading of predictions.jsonl -----------------------------------------------------
# Written here from the documented formats alone (data/prompt.py ends a chain with "The answer is X.",
# a \boxed{X} is the fallback, the benchmarks' gold conventions), with nothing from magdi_dist.eval or
# magdi_dist.mag.grading, so the summary is checked against a second implementation, not against itself.

# "The answer is" and what follows (the tiny student sometimes drops the space: "isL"); "isn't" negates.
_STATED = re.compile(r"(?i)\bthe answer is(?=[\s:])")  # "isn't", "island", "isL" state nothing


def read_answer(text: str) -> str | None:
    """The answer of the first "The answer is X" that states one (X ends at a line break or at a full stop
    that ends the sentence: "3.5." is 3.5), else the content of the last closed \\boxed{...}; else None."""
    stated = []
    for part in _STATED.split(text)[1:]:  # the text after each statement, up to the next one
        part = part.lstrip()
        part = part[1:] if part.startswith(":") else part  # "The answer is: 7"
        part = re.split(r"\.(?=\s|$)", part.split("\n")[0])[0]
        part = part.strip().strip(" *\"'`")
        if part:
            stated.append(part)
    if stated:
        return stated[0]
    for start in reversed([m.end() for m in re.finditer(r"\\boxed\{", text)]):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip() or None
    return None  # no statement and no closed box


def _number(text: str) -> float | None:
    """A numeric answer's value: the answer itself when it is a number once "$", "%", thousands commas,
    spaces ("70 000") and a final "." are dropped, else the last number in it ("18 dollars")."""
    s = re.sub(r"[$%]|,(?=\d{3}(?!\d))", "", text).strip().rstrip(".")
    if re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)", s.replace(" ", "")):
        return float(s.replace(" ", ""))
    found = re.findall(r"\d+(?:\.\d+)?", s)
    return float(found[-1]) if found else None


def _yes_no(text: str) -> bool | None:
    word = re.match(r"[a-z]+", text.strip(" *\"'`").lower())  # "Yes, because ..." is yes
    return {"yes": True, "true": True, "no": False, "false": False}.get(word.group(0)) if word else None


def _choice(text: str, options: list[str]) -> int | None:
    """The chosen option's 0-based index: a letter ("B", "(b)", "B) 300"), a 1-based number for plain
    options (ECQA, ARC), an option's text, or for "A)..."-labelled options (AQuA) an option's value."""
    s = text.strip(" *\"'`").rstrip(".").strip()
    letters = [chr(65 + i) for i in range(len(options))]
    labelled = all(o.startswith(f"{c})") for c, o in zip(letters, options, strict=True))
    values = [o[2:].strip() if labelled else o.strip() for o in options]
    bare = re.fullmatch(r"\(?([A-Za-z])\)?", s)
    if bare:
        return letters.index(bare.group(1).upper()) if bare.group(1).upper() in letters else None
    if not labelled and s.isdigit():
        return int(s) - 1 if 1 <= int(s) <= len(options) else None
    for i, (option, value) in enumerate(zip(options, values, strict=True)):
        if s.casefold() in (option.casefold().rstrip("."), value.casefold().rstrip(".")):
            return i
    prefixed = re.match(r"\(?([A-Za-z])[):.]", s)
    if prefixed:
        return letters.index(prefixed.group(1).upper()) if prefixed.group(1).upper() in letters else None
    n = _number(s) if labelled else None
    for i, value in enumerate(values):
        v = _number(value)
        if n is not None and v is not None and math.isclose(v, n, rel_tol=1e-9):
            return i
    return None


def meaning(task: str, answer: str, options: list[str] | None) -> float | bool | int | None:
    """What an answer says for its task family; None when it says nothing readable."""
    if task == "numeric":
        return _number(answer)
    if task == "yes_no":
        return _yes_no(answer)
    assert task == "multiple_choice" and options, (task, options)
    return _choice(answer, options)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def independent_vote(task: str, answers: list[str | None], options: list[str] | None) -> tuple[str | None, int]:
    """Majority over what the answers mean (unreadable ones by their text); the group seen first wins a
    tie; the winner is its group's first answer, with the group's size. No answer: (None, 0)."""
    groups: list[list] = []  # [meaning, first answer, count]
    for answer in answers:
        if answer is None:
            continue
        m = meaning(task, answer, options)
        key = ("text", answer.strip().casefold()) if m is None else m
        for group in groups:
            if _same(group[0], key):
                group[2] += 1
                break
        else:
            groups.append([key, answer, 1])
    if not groups:
        return None, 0
    best = max(groups, key=lambda g: g[2])  # max() keeps the first of equal counts
    return best[1], best[2]


def independent_correct(task: str, vote: str | None, gold: str, options: list[str] | None) -> bool:
    expected = meaning(task, gold, options)
    assert expected is not None, f"gold {gold!r} unreadable for {task}"
    said = None if vote is None else meaning(task, vote, options)
    return said is not None and _same(said, expected)


def _wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval, from the textbook formula."""
    z = statistics.NormalDist().inv_cdf(0.975)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _check_against_records(summary: dict, records: list[dict]) -> None:
    """Every summary number, recomputed from predictions.jsonl alone with the independent reading above:
    answers re-read from the sample texts, votes re-cast, correctness re-graded against the gold."""
    n = len(records)
    assert summary["n"] == n and [r["index"] for r in records] == list(range(n))
    correct = no_answer = 0
    answers_all: list[str | None] = []
    for r in records:
        answers = [read_answer(t) for t in r["samples"]]
        assert r["answers"] == answers, r["samples"]
        vote, count = independent_vote(r["task"], answers, r["options"])
        assert (r["vote"], r["vote_count"]) == (vote, count), answers
        ok = independent_correct(r["task"], vote, r["gold"], r["options"])
        assert r["correct"] is ok, (vote, r["gold"])
        correct += ok
        no_answer += all(a is None for a in answers)
        answers_all += answers
        assert r["generated_tokens"] == sum(r["sample_tokens"]) and len(r["samples"]) == summary["k"]
        assert all(0 <= t <= summary["max_new_tokens"] for t in r["sample_tokens"])
    assert summary["correct"] == correct
    assert summary["accuracy"] == pytest.approx(correct / n)
    assert (summary["ci95_low"], summary["ci95_high"]) == pytest.approx(_wilson(correct, n))
    assert summary["ci95_low"] <= summary["accuracy"] <= summary["ci95_high"]
    assert summary["samples"] == len(answers_all) == n * summary["k"]
    assert summary["extraction_failure_rate"] == pytest.approx(sum(a is None for a in answers_all) / len(answers_all))
    assert summary["no_answer_rate"] == pytest.approx(no_answer / n)
    assert summary["tokens_per_question"] == pytest.approx(sum(r["generated_tokens"] for r in records) / n)
    assert summary["tokens_per_sample"] == pytest.approx(sum(r["generated_tokens"] for r in records) / len(answers_all))
    assert summary["latency_s_per_question"] == pytest.approx(sum(r["latency_s"] for r in records) / n)


# Crafted outputs on which the library (magdi_dist.mag.answers) must read what the independent reading
# reads (the first statement after the prompt; a rambling second question is never read).
CRAFTED_TEXTS = [
    "Step 1: 3 + 4 = 7. So the answer is 7. The answer is 7.",
    "The answer is 3.5.",
    "The answer is $1,000.\nQuestion: next",
    "the answer is B) 300. And more",
    "The answer is 18 The answer is 19",
    "THE ANSWER IS **12**.",
    "The answer is: 7.",
    "The answer is\n5.",
    "So the answer isL. The answer",
    "The answer is 4. The answer is",
    "The answer is .",
    "We get \\boxed{12} and \\boxed{\\frac{1}{2}}",
    "\\boxed{1} then \\boxed{2",
    "Step 1: 3 + 4 = 7.",
    "The answer isn't 5.",
    "So the answer is 9. The answer is the answer is 32.",
    "Step 1: 3 + 4 = 7. The answer is 7. Question: Ben has 2 pens. Answer: The answer is 4.",
]
AQUA = ["A)270", "B)300", "C)280", "D)320", "E)315"]
ECQA = ["greedy", "worry", "have knowledge", "rest", "understand"]
CRAFTED_VOTES = [
    ("numeric", ["17", "18", "$18.00", None, "17", "18 dollars"], None, "18"),
    ("numeric", ["1,000", "999", "1000.0", "$1,000."], None, "1000"),
    ("numeric", ["17", "18", "18.0", "17.00"], None, "18"),
    ("numeric", [None, None], None, "3"),
    ("multiple_choice", ["B", "A", "B)300", "300", "A"], AQUA, "B"),
    ("multiple_choice", ["1", "3", "have knowledge", "(c)"], ECQA, "3"),
    ("yes_no", ["No.", "yes", "Yes, because", "no", "YES"], None, "yes"),
    ("yes_no", ["no", "Yes, because", "yes"], None, "yes"),
    ("numeric", ["5", "105, 19", "19"], None, "19"),
]


@pytest.mark.parametrize("text", CRAFTED_TEXTS)
def test_library_extraction_agrees_with_the_independent_reading(text):
    from magdi_dist.mag.answers import extract_answer

    assert extract_answer(text) == read_answer(text)


@pytest.mark.parametrize("task, answers, options, gold", CRAFTED_VOTES)
def test_library_vote_agrees_with_the_independent_vote(task, answers, options, gold):
    from magdi_dist.mag.answers import is_correct, majority_vote

    vote = majority_vote(task, answers, options)
    mine = independent_vote(task, answers, options)
    assert (vote.answer, vote.count) == mine
    assert is_correct(task, vote.answer, gold, options) == independent_correct(task, mine[0], gold, options)


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


def test_reuse_returns_only_the_same_finished_evaluation(student, synth, tmp_path, monkeypatch):
    import os
    import shutil

    import magdi_dist.recipes.evaluate as ev

    model = tmp_path / "model"
    shutil.copytree(student, model)
    kw = dict(limit=4, max_new_tokens=8, batch_size=2)
    first, _ = _run(model, synth, tmp_path / "eval", **kw)
    ran = []
    real = ev._records
    monkeypatch.setattr(ev, "_records", lambda *a: ran.append(1) or real(*a))

    def again(**over) -> dict:
        cfg = {"model": str(model), "data": str(synth), "out": str(tmp_path / "eval"), "progress": False,
               "reuse": True, **kw, **over}
        return evaluate(EvalConfig(**cfg))

    assert again() == first and ran == []  # the same evaluation: read back, nothing generated
    assert again(max_new_tokens=9)["max_new_tokens"] == 9 and len(ran) == 1  # other decoding: runs
    again(max_new_tokens=8)  # (the folder now holds max_new_tokens 9: runs, and writes 8 back)
    assert len(ran) == 2
    again(limit=3)
    assert len(ran) == 3
    again(limit=4)
    assert len(ran) == 4
    assert again() and len(ran) == 4
    # The model retrained after the evaluation (its files newer): the old answers are not its answers.
    summary = tmp_path / "eval" / "summary.json"
    earlier = (model / "config.json").stat().st_mtime - 5
    os.utime(summary, (earlier, earlier))
    again()
    assert len(ran) == 5
    assert again() and len(ran) == 5


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
