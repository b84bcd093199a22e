"""``magdi-dist debate`` against a real OpenAI-compatible server: ``transformers serve`` of SmolLM2-135M-
Instruct on 127.0.0.1 (started here, stopped by its pid), agents differing by seed, temperature and a
system prompt, a local Ray. Small on purpose (a few GSM8K questions, short replies): the server answers
one request at a time on this 2-core machine.

* 3 agents x 2 rounds x 3 GSM8K questions through the CLI, with the server SIGKILLed after a few turns
  and another one started on another port: the re-run asks exactly the turns the first run did not
  log (the two servers' access logs together answered every turn once); graded MAGs with provenance
  that ``inspect --strict`` accepts; a third run asks nothing and leaves the file byte-identical;
* the ReConcile protocol end to end.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import yaml
from debate_fixtures import MODEL, config, local_ray, model_dir, serve, teacher_server  # noqa: F401
from typer.testing import CliRunner

from magdi_dist.cli import app
from magdi_dist.debate.run import run_debate
from magdi_dist.mag.readers import read_mags

pytestmark = pytest.mark.slow

QUESTIONS, AGENTS, ROUNDS = 3, 3, 2
TURNS = QUESTIONS * AGENTS * ROUNDS


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return shared_data / "benchmarks" / "gsm8k" / "test.jsonl"


def _cli_json(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.stdout.strip(), result.stderr[-3000:]
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def _kill_after(server, log, turns: int, killed: threading.Event) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= turns:
            server.stop(signal.SIGKILL)  # a crash: no graceful shutdown
            killed.set()
            return
        time.sleep(0.05)


def test_end_to_end_with_a_server_crash_and_resume(tmp_path, gsm8k, model_dir, teacher_server,  # noqa: F811
                                                   local_ray):  # noqa: F811
    first = serve(model_dir, tmp_path / "serve1")
    cfg = config(tmp_path, gsm8k, first.base_url, limit=QUESTIONS, k=AGENTS, rounds=ROUNDS, max_tokens=16)
    cfg_path = tmp_path / "debate.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    log = cfg.state_path / "turns.jsonl"
    killed = threading.Event()
    watcher = threading.Thread(target=_kill_after, args=(first, log, 4, killed), daemon=True)
    watcher.start()
    try:
        code1, run1 = _cli_json("debate", "--config", str(cfg_path), "--json", "--no-progress")
    finally:
        watcher.join(timeout=5)
        first.stop()
    assert killed.is_set() and code1 == 1
    asked1 = run1["turns_asked"]
    assert 4 <= asked1 < TURNS and run1["incomplete"] >= 1 and run1["failures"] >= 1
    assert all("connect" in f["error"].lower() for f in run1["failed"]), run1["failed"]
    logged1 = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged1) == asked1 == first.answered()

    # The server comes back on another port (endpoints are not part of the config's fingerprint).
    cfg_path.write_text(cfg_path.read_text().replace(first.base_url, teacher_server.base_url))
    before = teacher_server.answered()
    code2, run2 = _cli_json("debate", "--config", str(cfg_path), "--json", "--no-progress")
    print(f"\nresume: run 1 asked {asked1} turns, run 2 asked {run2['turns_asked']} ({TURNS} in all)")
    assert code2 == 0, run2
    assert (run2["turns_asked"], run2["turns_reused"], run2["complete"], run2["failures"]) == (
        TURNS - asked1, asked1, QUESTIONS, 0)
    assert teacher_server.answered() - before == TURNS - asked1  # nothing answered before was asked again
    assert len({(t["question_id"], t["agent"], t["round"]) for t in map(json.loads, log.read_text().splitlines())}
               ) == TURNS
    spent = run2["tokens_per_agent"]
    assert set(spent) == {"agent0", "agent1", "agent2"}
    assert all(t["turns"] == QUESTIONS * ROUNDS and t["prompt_tokens"] > 0 and t["completion_tokens"] > 0
               for t in spent.values())
    assert len(run2["per_round_accuracy"]) == ROUNDS and len(run2["per_round_agreement"]) == ROUNDS

    mags = read_mags([cfg.out]).mags  # strict: every record is a valid, graded MAG
    assert [m.id for m in mags] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    first_turns = {(t["question_id"], t["agent"], t["round"]): t for t in logged1}
    for mag in mags:
        assert [(r.agent, r.round) for r in mag.responses] == [(f"agent{a}", r) for r in range(2) for a in range(3)]
        assert mag.generation["protocol"] == "du" and len(mag.generation["content_sha256"]) == 64
        assert [a["temperature"] for a in mag.generation["agents"]] == [0.7, 0.9, 1.1]
        for r in mag.responses:
            assert r.label is not None and r.meta["served_model"].startswith(MODEL)
            assert r.meta["usage"]["prompt_tokens"] > 0 and r.meta["started_at"] <= r.meta["finished_at"]
            old = first_turns.get((mag.id, r.agent, r.round))  # kept as first answered, by the first server
            assert r.meta["endpoint"] == (first.base_url if old else teacher_server.base_url)
            assert old is None or r.meta["started_at"] == old["started_at"]
        # Round 1 reads round 0 (Du keeps each agent's history): its prompts are longer.
        tokens = [r.meta["usage"]["prompt_tokens"] for r in mag.responses]
        assert min(tokens[3:]) > max(tokens[:3])
    # The agents sample with their own seeds and temperatures: they do not all say the same thing.
    assert any(len({r.reasoning for r in m.responses if r.round == 0}) > 1 for m in mags)

    code, inspected = _cli_json("inspect", "--strict", "--json", cfg.out)
    assert code == 0 and (inspected["mags"], inspected["rejected"], inspected["rounds"]) == (QUESTIONS, 0, ROUNDS)
    assert inspected["agents"] == ["agent0", "agent1", "agent2"]

    written = (tmp_path / "mags.jsonl").read_bytes()
    code3, run3 = _cli_json("debate", "--config", str(cfg_path), "--json", "--no-progress")
    assert code3 == 0 and (run3["turns_asked"], run3["turns_reused"], run3["unchanged"]) == (0, TURNS, True)
    assert (tmp_path / "mags.jsonl").read_bytes() == written
    assert teacher_server.answered() - before == TURNS - asked1


def test_reconcile_protocol(tmp_path, gsm8k, teacher_server, local_ray):  # noqa: F811
    cfg = config(tmp_path, gsm8k, teacher_server.base_url, limit=1, k=2, rounds=2, max_tokens=24,
                 protocol={"kind": "reconcile"})
    summary = run_debate(cfg, progress=False)
    assert (summary["complete"], summary["turns_asked"], summary["failures"]) == (1, 4, 0)
    (mag,) = read_mags([cfg.out]).mags
    assert mag.generation["protocol"] == "reconcile"
    assert [r.label is not None for r in mag.responses] == [True] * 4
    for r in mag.responses:
        assert r.meta["answer_source"] in ("json", "boxed", "statement", "last_number", "none")
        assert "confidence" in r.meta and r.meta["usage"]["completion_tokens"] > 0
