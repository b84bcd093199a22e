"""Retries, backoff and failure records against an endpoint that misbehaves on purpose (tests/debate_stub.py,
the only stub in the debate tests): 429 with Retry-After, 500, 503 every time, 400 (not retried), and 200s
that are no usable chat completion; the endpoint gate's concurrency limit across agents; the next run
retries exactly what failed."""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import pytest
from debate_fixtures import config, local_ray, start_stub  # noqa: F401  (fixture)
from typer.testing import CliRunner

from magdi_dist.cli import app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _questions(path):
    rows = [("FLAKY: what is 3 + 4?", 7), ("BROKEN: what is 2 + 5?", 7), ("REJECTED: what is 1 + 6?", 7)]
    path.write_text("".join(json.dumps({"question": q, "answer": f"{q} #### {a}"}) + "\n" for q, a in rows))
    return path


def _run(cfg_path, tmp_path):
    result = CliRunner().invoke(app, ["debate", "--config", str(cfg_path), "--json", "--no-progress"])
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return result.exit_code, summary


def _write_config(tmp_path, base_url):
    import yaml

    cfg = config(tmp_path, _questions(tmp_path / "q.jsonl"), base_url, limit=3, k=2, sample=False,
                 limits={"max_concurrency": 1, "requests_per_second": 50, "timeout_s": 10, "max_retries": 2,
                         "backoff_initial_s": 0.2, "backoff_max_s": 5})
    path = tmp_path / "debate.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return cfg, path


def test_backoff_failure_records_and_retry_on_the_next_run(tmp_path, local_ray, capsys):  # noqa: F811
    stub = start_stub(tmp_path)
    try:
        cfg, cfg_path = _write_config(tmp_path, stub.base_url)
        code, summary = _run(cfg_path, tmp_path)
    finally:
        stub.stop()
    assert code == 1  # incomplete questions: the run says so
    assert (summary["questions"], summary["complete"], summary["incomplete"]) == (3, 1, 2)
    # FLAKY: all 4 turns made it, each after a 429 and a 500.
    turns = [json.loads(line) for line in (cfg.state_path / "turns.jsonl").read_text().splitlines()]
    assert sorted((t["question_id"], t["agent"], t["round"]) for t in turns) == [
        ("gsm8k-0", a, r) for a in ("agent0", "agent1") for r in (0, 1)]
    for t in turns:
        assert t["attempts"] == 3 and [e.split(":")[0] for e in t["retried_errors"]] == ["HTTP 429", "HTTP 500"]
    # BROKEN (503) was retried twice per agent, REJECTED (400) never; round 1 was never asked for either.
    failures = {(f["question_id"], f["agent"], f["round"]): f for f in
                map(json.loads, (cfg.state_path / "failures.jsonl").read_text().splitlines())}
    assert sorted(failures) == [(q, a, 0) for q in ("gsm8k-1", "gsm8k-2") for a in ("agent0", "agent1")]
    for (qid, _, _), f in failures.items():
        assert f["attempts"] == (3 if qid == "gsm8k-1" else 1)
        assert f["error"].startswith("HTTP 503" if qid == "gsm8k-1" else "HTTP 400")
    assert {(f["question_id"], f["agent"], f["round"]) for f in summary["failed"]} == set(failures)
    # Waits: the 429's Retry-After (0.3 s), then 0.2 * 2 s halved at most by jitter; a 503 retry waits
    # at least 0.1 s, then 0.2 s. The gate let one request in at a time, though two agents asked at once.
    log = [json.loads(line) for line in stub.log.read_text().splitlines()]
    by_key = defaultdict(list)
    for rec in log:
        by_key[rec["key"]].append(rec)
    for recs in by_key.values():
        t = [r["t"] for r in recs]
        if recs[0]["marker"] == "FLAKY":
            assert [r["status"] for r in recs] == [429, 500, 200]
            assert t[1] - t[0] >= 0.3 and t[2] - t[1] >= 0.2
        elif recs[0]["marker"] == "BROKEN":
            assert [r["status"] for r in recs] == [503] * 3
            assert t[1] - t[0] >= 0.1 and t[2] - t[1] >= 0.2
    assert summary["gates"] == [{"endpoint": stub.base_url, "admitted": len(log), "peak_in_flight": 1,
                                 "in_flight": 0}]
    mags = (tmp_path / "mags.jsonl").read_text().splitlines()
    assert [json.loads(m)["id"] for m in mags] == ["gsm8k-0"]

    # The endpoint heals: the next run asks exactly the 8 missing turns and nothing of gsm8k-0.
    healed = start_stub(tmp_path, healthy=True)
    try:
        cfg_path.write_text(cfg_path.read_text().replace(stub.base_url, healed.base_url))
        code, summary = _run(cfg_path, tmp_path)
    finally:
        healed.stop()
    assert code == 0 and summary["complete"] == 3 and summary["failures"] == 0
    assert (summary["turns_asked"], summary["turns_reused"]) == (8, 4)
    asked = [json.loads(line) for line in healed.log.read_text().splitlines()]
    assert len(asked) == 8 and {r["marker"] for r in asked} == {"BROKEN", "REJECTED"}
    assert [json.loads(m)["id"] for m in (tmp_path / "mags.jsonl").read_text().splitlines()] == [
        "gsm8k-0", "gsm8k-1", "gsm8k-2"]
    # Finished: a re-run asks nothing (no endpoint is even up) and leaves the output byte-identical. This
    # one goes through the Ray job entrypoint, which joins the running Ray as a submitted job's driver does.
    written = (tmp_path / "mags.jsonl").read_bytes()
    spec = importlib.util.spec_from_file_location("debate_job", REPO / "ray_jobs" / "debate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(SystemExit) as done:  # a Typer app exits like a command line
        job.main(["--config", str(cfg_path), "--json", "--no-progress"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done.value.code == 0 and (summary["turns_asked"], summary["turns_reused"], summary["unchanged"]) == (
        0, 12, True)
    assert (tmp_path / "mags.jsonl").read_bytes() == written


def test_config_and_input_errors_exit_2(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["debate", "--questions", "q.jsonl", "--out", "o.jsonl"])
    assert missing.exit_code == 2 and "--base-url, --model" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents: [{name: a, base_url: 'http://x/v1', model: m, api_key: sk-123}]\n"
                   "questions: {path: q.jsonl}\nout: o.jsonl\n")
    result = runner.invoke(app, ["debate", "--config", str(bad)])
    assert result.exit_code == 2 and "api_key_env" in result.stderr and "sk-123" not in result.stderr
    nofile = runner.invoke(app, ["debate", "--questions", str(tmp_path / "none.jsonl"), "--base-url", "http://x/v1",
                                 "--model", "m", "--out", str(tmp_path / "o.jsonl")])
    assert nofile.exit_code == 2 and "no such data file" in nofile.stderr
    keyed = tmp_path / "keyed.yaml"
    _questions(tmp_path / "q.jsonl")
    keyed.write_text("agents: [{name: a, base_url: 'http://127.0.0.1:9/v1', model: m, api_key_env: MAGDI_NO_SUCH_KEY}]"
                     f"\nquestions: {{path: {tmp_path / 'q.jsonl'}}}\nout: {tmp_path / 'o.jsonl'}\n")
    result = runner.invoke(app, ["debate", "--config", str(keyed)])
    assert result.exit_code == 2 and "MAGDI_NO_SUCH_KEY" in result.stderr


BAD_KINDS = {  # question marker -> how its failure record must begin (after "bad reply: ")
    "BADJSON": "reply is not JSON (content-type application/json",
    "HTML": "reply is not JSON (content-type text/html",
    "HUGE": "reply body is over the 16000000-byte limit",
    "BIGREPLY": "reply field choices[0].message.content is 1000001 characters, over the limit of 1000000",
    "SHAPE": "reply is a JSON list, not a chat completion object",
    "NOCONTENT": "reply has no choices[0].message.content",
}


def test_bad_replies_are_failed_requests_and_answered_turns_are_kept(tmp_path, local_ray):  # noqa: F811
    """200s that are no chat completion (cut-short JSON, an HTML page, 20 MB of junk, a message over the
    readers' limit, a JSON list, no content) are retried, then logged as failures with their reason; no
    traceback; the turns that did come back stay, also beside a bad one in the same round and before
    one in a later round; the next run asks only what is missing, and the MAGs read back strictly."""
    import yaml

    markers = ["OK", *BAD_KINDS, "HALF", "LATE"]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": f"{m}: what is 3 + 4?", "answer": "#### 7"})
                                              + "\n" for m in markers))
    stub = start_stub(tmp_path)
    try:
        cfg = config(tmp_path, tmp_path / "q.jsonl", stub.base_url, limit=len(markers), k=2, sample=False,
                     limits={"max_concurrency": 4, "timeout_s": 30, "max_retries": 2, "backoff_initial_s": 0.05})
        cfg_path = tmp_path / "debate.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        result = CliRunner().invoke(app, ["debate", "--config", str(cfg_path), "--json", "--no-progress"])
    finally:
        stub.stop()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit | None), result.output
    assert "Traceback" not in result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["complete"], summary["incomplete"]) == (1, len(markers) - 1)
    qid = {m: f"gsm8k-{i}" for i, m in enumerate(markers)}
    turns = {(t["question_id"], t["agent"], t["round"]) for t in
             map(json.loads, (cfg.state_path / "turns.jsonl").read_text().splitlines())}
    kept = {(qid["OK"], a, r) for a in ("agent0", "agent1") for r in (0, 1)}
    kept |= {(qid["HALF"], "agent0", 0), (qid["LATE"], "agent0", 0), (qid["LATE"], "agent1", 0)}
    assert turns == kept
    failures = {(f["question_id"], f["agent"], f["round"]): f for f in
                map(json.loads, (cfg.state_path / "failures.jsonl").read_text().splitlines())}
    expected = {(qid[m], a, 0): f"bad reply: {why}" for m, why in BAD_KINDS.items() for a in ("agent0", "agent1")}
    expected[(qid["HALF"], "agent1", 0)] = "bad reply: reply is not JSON (content-type application/json"
    for a in ("agent0", "agent1"):
        expected[(qid["LATE"], a, 1)] = "bad reply: reply is not JSON (content-type text/html"
    assert sorted(failures) == sorted(expected)
    for k, f in failures.items():
        assert f["error"].startswith(expected[k]), (k, f["error"])
        assert f["attempts"] == 3 and len(f["errors"]) == 3  # retried, as a 5xx would be
    log = [json.loads(line) for line in stub.log.read_text().splitlines()]
    assert sum(r["bad"] is not None for r in log) == 3 * len(failures)

    # Healthy again: exactly the missing turns are asked, none of the kept ones, and every MAG reads strictly.
    healed = start_stub(tmp_path, healthy=True)
    try:
        cfg_path.write_text(cfg_path.read_text().replace(stub.base_url, healed.base_url))
        result = CliRunner().invoke(app, ["debate", "--config", str(cfg_path), "--json", "--no-progress"])
    finally:
        healed.stop()
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == 0 and summary["complete"] == len(markers), result.output
    assert (summary["turns_asked"], summary["turns_reused"]) == (4 * len(markers) - len(kept), len(kept))
    asked = [json.loads(line) for line in healed.log.read_text().splitlines()]
    assert len(asked) == 4 * len(markers) - len(kept) and "OK" not in {r["marker"] for r in asked}
    assert not [r for r in asked if r["marker"] == "LATE" and r["user_turns"] == 1]
    assert not [r for r in asked if r["marker"] == "HALF" and r["user_turns"] == 1 and r["temperature"] < 0.8]
    strict = CliRunner().invoke(app, ["inspect", str(tmp_path / "mags.jsonl"), "--strict", "--json"])
    assert strict.exit_code == 0 and json.loads(strict.stdout)["mags"] == len(markers), strict.output


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"choices": [{"message": {"content": "\\ud800 lone"}}]}', "is not valid Unicode"),
    (b'{"choices": [{"message": {"content": "7"}}], "usage": {"prompt_tokens": "11"}}', "not a token count"),
    (b'{"choices": [{"message": {"content": "7"}}], "usage": {"completion_tokens": NaN}}', "not a token count"),
    (b'{"choices": [{"message": {"content": 7}}]}', "content is int, not a string"),
    (b'{"choices": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "RecursionError"),
    (b'{"choices": [{"message": {"content": "7"}}], "model": "' + b"m" * 1001 + b'"}', "model is 1001 characters"),
])
def test_what_a_turn_would_carry_into_the_log_is_checked(body, reason):
    """Replies that would crash the log writer (a lone surrogate cannot be encoded), the run summary
    (a token count that is a string or NaN) or the parser itself (nesting) are bad replies too."""
    from magdi_dist.debate.client import BadReply, parse_reply

    with pytest.raises(BadReply, match=reason):
        parse_reply(body, "application/json")
    assert parse_reply(b'{"choices": [{"message": {"content": "7"}}]}')["content"] == "7"
