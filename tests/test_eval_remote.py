"""``magdi-dist evaluate --base-url`` against real ``transformers serve`` processes on 127.0.0.1 (free
ports, temp dirs, stopped by their pids), compared with local evaluation of the same student on the
same GSM8K questions:

* the tiny exported student (no chat template: /v1/completions): greedy records equal local
  evaluation's -- samples, answers, token counts, votes, grades -- and so do the summary numbers; an
  evaluation SIGKILLed after a few samples asks, when run again, exactly the samples it had not logged
  (the server's access log answered each sample once), and a finished one asks nothing;
* two endpoints share the requests and give the same records;
* self-consistency through the server samples (k seeded requests per question);
* SmolLM2-135M-Instruct (a chat template: /v1/chat/completions, the server applies the same template):
  greedy records equal local evaluation's; a student whose tokenizer is not the served model's is
  refused on the first reply (prompt token counts differ).

Why greedy remote text can equal local text exactly: both run ``model.generate`` greedily on the same
token ids (checked per reply: ``usage.prompt_tokens``), and the client cuts the reply where local
generation's stop rule would have stopped. Local evaluation batches left-padded prompts, the server
runs one unpadded prompt at a time; on these models and questions the logits' argmax does not change
with the padding (asserted here, not assumed: a near-tie could flip one token, and the test would
name the question).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from debate_fixtures import MODEL, model_dir  # noqa: F401
from test_eval_support import tiny_student

from benchmarks.serving import SAMPLING_EXTRA_BODY, free_port, launch_transformers_serve
from magdi_dist.eval.remote import LOG_DIR, PromptMismatch
from magdi_dist.recipes.evaluate import EvalConfig, evaluate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N, TOKENS = 8, 32


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return tiny_student(tmp_path_factory)


@pytest.fixture(scope="module")
def gsm8k(shared_data) -> Path:
    return shared_data / "benchmarks" / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module", autouse=True)
def servers(model_dir, tmp_path_factory, request):  # noqa: F811
    """The module's three servers (SmolLM2's, then two of the tiny student), launched before its first
    test: each start-up is one core importing and loading for many seconds, so they overlap with each
    other, with the tiny student's training and with the tests that run meanwhile. A test waits only
    for the servers it uses."""
    launched = {}
    try:
        # One intra-op thread, as every process of the suite (tests/debate_fixtures.py says why).
        launched["smollm2"] = launch_transformers_serve(model_dir, tmp_path_factory.mktemp("serve-smollm2"),
                                                        name=MODEL, threads=1)
        student = request.getfixturevalue("student")
        for key in ("tiny", "tiny2"):
            launched[key] = launch_transformers_serve(student, tmp_path_factory.mktemp(f"serve-{key}"), name="tiny",
                                                      threads=1)
        yield launched
    finally:
        for server in launched.values():
            server.stop()


@pytest.fixture(scope="module")
def tiny_server(servers):
    return servers["tiny"].wait_ready()


@pytest.fixture(scope="module")
def local(student, gsm8k, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    summary = evaluate(EvalConfig(model=str(student), data=str(gsm8k), limit=N, max_new_tokens=TOKENS,
                                  out=str(out), progress=False))
    return summary, _records(out)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _same_records(remote: list[dict], local: list[dict]) -> None:
    assert [r["id"] for r in remote] == [r["id"] for r in local]
    for got, want in zip(remote, local, strict=True):
        # latency_s is what each side's generation took; everything else is the student's answer.
        assert _answer(got) == _answer(want), f"question {got['id']}: remote {got['samples']!r} != {want['samples']!r}"


def _answer(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "latency_s"}


NUMBERS = ("n", "correct", "accuracy", "ci95_low", "ci95_high", "extraction_failure_rate", "no_answer_rate",
           "tokens_per_question", "tokens_per_sample", "contamination_excluded")


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "magdi_dist.cli", "evaluate", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_remote_evaluation_asks_only_what_is_missing_and_equals_local(student, gsm8k, tiny_server, local,
                                                                             tmp_path):
    out = tmp_path / "remote"
    args = ["--model", str(student), "--served-model", "tiny", "--base-url", tiny_server.base_url,
            "--data", str(gsm8k), "--limit", str(N), "--max-new-tokens", str(TOKENS), "--out", str(out),
            "--max-concurrency", "1", "--no-progress", "--json"]
    before = tiny_server.answered()
    first = _cli(*args)
    log = out / LOG_DIR / "turns.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            first.send_signal(signal.SIGKILL)  # a crash: nothing is flushed on the way out
            break
        time.sleep(0.05)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the evaluation finished before it could be killed"
    logged = len(log.read_text().splitlines())
    assert 3 <= logged < N and not (out / "summary.json").exists()

    second = _cli(*args)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["requests"] == {"asked": N - logged, "reused": logged, "failed": 0}
    # Every sample was answered once: the killed run's in-flight request, if any, counts as asked by it.
    assert tiny_server.answered() - before in (N, N + 1)
    assert (summary["generation"], summary["endpoint"], summary["base_url"]) == (
        "remote", "completion", [tiny_server.base_url])
    local_summary, local_records = local
    _same_records(_records(out), local_records)
    assert {k: summary[k] for k in NUMBERS} == {k: local_summary[k] for k in NUMBERS}

    answered = tiny_server.answered()
    again = evaluate(EvalConfig(model=str(student), served_model="tiny", base_url=[tiny_server.base_url],
                                data=str(gsm8k), limit=N, max_new_tokens=TOKENS, out=str(out), progress=False))
    assert again["requests"] == {"asked": 0, "reused": N, "failed": 0} and tiny_server.answered() == answered


def test_two_endpoints_share_the_requests(student, gsm8k, tiny_server, servers, local, tmp_path):
    other = servers["tiny2"].wait_ready()
    before = (tiny_server.answered(), other.answered())
    summary = evaluate(EvalConfig(model=str(student), served_model="tiny",
                                  base_url=[tiny_server.base_url, other.base_url], data=str(gsm8k), limit=N,
                                  max_new_tokens=TOKENS, out=str(tmp_path / "out"), progress=False,
                                  max_concurrency=1))
    served = (tiny_server.answered() - before[0], other.answered() - before[1])
    assert sum(served) == N and min(served) >= 1, served
    endpoints = {json.loads(line)["endpoint"] for line in (tmp_path / "out" / LOG_DIR / "turns.jsonl").open()}
    assert endpoints == {tiny_server.base_url, other.base_url}
    _same_records(_records(tmp_path / "out"), local[1])
    assert summary["accuracy"] == local[0]["accuracy"]


def test_self_consistency_samples_through_the_server(student, gsm8k, tiny_server, tmp_path):
    summary = evaluate(EvalConfig(model=str(student), served_model="tiny", base_url=[tiny_server.base_url],
                                  data=str(gsm8k), limit=3, k=3, temperature=1.0, max_new_tokens=16,
                                  extra_body=json.dumps(SAMPLING_EXTRA_BODY), out=str(tmp_path), progress=False))
    records = _records(tmp_path)
    assert summary["samples"] == 9 and all(len(r["samples"]) == 3 for r in records)
    assert any(len(set(r["samples"])) > 1 for r in records)  # sampled, not three greedy copies
    seeds = [json.loads(line)["seed"] for line in (tmp_path / LOG_DIR / "turns.jsonl").open()]
    assert len(set(seeds)) == 9


@pytest.fixture(scope="module")
def smollm2_server(servers):
    return servers["smollm2"].wait_ready()


def test_chat_student_through_the_chat_endpoint_equals_local(model_dir, gsm8k, smollm2_server, tmp_path):  # noqa: F811
    kw = {"model": str(model_dir), "data": str(gsm8k), "limit": 3, "max_new_tokens": 48, "progress": False}
    local_summary = evaluate(EvalConfig(**kw, out=str(tmp_path / "local")))
    remote = evaluate(EvalConfig(**kw, served_model=MODEL, base_url=[smollm2_server.base_url],
                                 out=str(tmp_path / "remote"), max_concurrency=1))
    assert remote["endpoint"] == "chat"
    _same_records(_records(tmp_path / "remote"), _records(tmp_path / "local"))
    assert remote["accuracy"] == local_summary["accuracy"]


def test_a_server_reading_another_prompt_is_refused(student, gsm8k, smollm2_server, tmp_path):
    # The tiny student's prompt, tokenised by SmolLM2's tokenizer: not the ids local evaluation feeds.
    with pytest.raises(PromptMismatch, match=r"read the prompt of question gsm8k-0 as \d+ tokens"):
        evaluate(EvalConfig(model=str(student), served_model=MODEL, base_url=[smollm2_server.base_url],
                            data=str(gsm8k), limit=1, max_new_tokens=2, out=str(tmp_path), progress=False))
    assert not (tmp_path / LOG_DIR / "turns.jsonl").read_text()  # nothing of it was logged


def test_an_endpoint_that_never_answers_leaves_the_evaluation_incomplete(student, gsm8k, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: every attempt is refused
    proc = _cli("--model", str(student), "--base-url", dead, "--data", str(gsm8k), "--limit", "2",
                "--max-retries", "1", "--backoff-initial-s", "0.01", "--max-concurrency", "1", "--out", str(tmp_path),
                "--no-progress")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    # After its first request failed (2 attempts), the endpoint was asked nothing more.
    assert "2 of 2 samples have no answer (1 failed requests" in stderr and "run again" in stderr
    (failure,) = [json.loads(line) for line in (tmp_path / LOG_DIR / "failures.jsonl").open()]
    assert failure["attempts"] == 2 and failure["endpoint"] == dead and "Connect" in failure["error"]
    assert not (tmp_path / "summary.json").exists()


def test_a_dead_endpoints_request_goes_to_a_live_one(student, gsm8k, tiny_server, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    summary = evaluate(EvalConfig(model=str(student), served_model="tiny", base_url=[dead, tiny_server.base_url],
                                  data=str(gsm8k), limit=3, max_new_tokens=8, out=str(tmp_path), progress=False,
                                  max_retries=0, max_concurrency=1))
    assert summary["n"] == 3 and summary["requests"] == {"asked": 3, "reused": 0, "failed": 1}
    (failure,) = [json.loads(line) for line in (tmp_path / LOG_DIR / "failures.jsonl").open()]
    answered = [json.loads(line) for line in (tmp_path / LOG_DIR / "turns.jsonl").open()]
    assert failure["endpoint"] == dead and {r["endpoint"] for r in answered} == {tiny_server.base_url}
    assert failure["question_id"] in {r["question_id"] for r in answered}  # asked again, elsewhere
