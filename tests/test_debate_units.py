"""The debate package's parts without a server: config validation, prompts of both protocols, answer
extraction, the turn log (torn tail, corruption, foreign config, lock), the endpoint gate, backoff,
and MAG assembly with its content hash."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from magdi_dist.config import ConfigError
from magdi_dist.debate.build import build_mag, question_sha, request_seed
from magdi_dist.debate.client import backoff_delay
from magdi_dist.debate.config import EndpointLimits, debate_config_from_dict, load_debate_config, simple_config
from magdi_dist.debate.prompts import messages_for
from magdi_dist.debate.store import StateError, TurnStore
from magdi_dist.eval.endpoint import Gate
from magdi_dist.eval.questions import EvalQuestion
from magdi_dist.mag.answers import extract_turn

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **extra):
    tree = {"agents": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "m"},
                       {"name": "b", "base_url": "http://127.0.0.1:1/v1", "model": "m", "temperature": 0.9}],
            "questions": {"path": "q.jsonl"}, "out": str(tmp_path / "out.jsonl"), **extra}
    return debate_config_from_dict(tree)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"agents\.0: .*api_key must not be written"):
        _cfg(tmp_path, agents=[{"name": "a", "base_url": "http://x/v1", "model": "m", "api_key": "sk-1"}])
    with pytest.raises(ConfigError, match=r"protocol: .*later_rounds: unknown fields \['peerz'\]"):
        _cfg(tmp_path, protocol={"later_rounds": "{question} {peerz}"})
    with pytest.raises(ConfigError, match=r"protocol: .*first_round: .*literal braces"):
        _cfg(tmp_path, protocol={"first_round": "answer as {json"})
    with pytest.raises(ConfigError, match=r"endpoints: .*not the base_url of any agent"):
        _cfg(tmp_path, endpoints={"http://other/v1": {"max_concurrency": 2}})
    with pytest.raises(ConfigError, match=r"rounds: .*greater than or equal to 1"):
        _cfg(tmp_path, rounds=0)
    with pytest.raises(ConfigError, match=r"agents: .*repeated: \['a'\]"):
        _cfg(tmp_path, agents=[{"name": "a", "base_url": "http://x/v1", "model": "m"}] * 2)
    with pytest.raises(ConfigError, match=r"limits\.max_retrys: unknown key"):
        _cfg(tmp_path, limits={"max_retrys": 3})


def test_overrides_and_the_simple_case(tmp_path):
    cfg = load_debate_config(REPO / "configs" / "debate_gsm8k.yaml", [f"out={tmp_path / 'o.jsonl'}", "rounds=3",
                                                                         "protocol.kind=reconcile"])
    assert (cfg.out, cfg.rounds, cfg.protocol.kind) == (str(tmp_path / "o.jsonl"), 3, "reconcile")
    assert "confidence_level" in cfg.protocol.answer_formats["numeric"]  # the kind's own defaults
    simple = simple_config(questions="q.jsonl", out=str(tmp_path / "o.jsonl"), base_url="http://h/v1", model="m",
                           agents=3, max_tokens=40)
    assert [(a.name, a.seed, a.temperature) for a in simple.agents] == [
        ("agent0", 0, 0.7), ("agent1", 1, 0.8), ("agent2", 2, 0.9)]
    assert simple.state_path == Path(str(tmp_path / "o.jsonl") + ".debate")
    # The fingerprint ignores endpoints and limits (a restarted server keeps its turns), not sampling.
    moved = simple.model_copy(update={"agents": [a.model_copy(update={"base_url": "http://x/v1"})
                                                 for a in simple.agents], "workers": 4})
    assert moved.fingerprint() == simple.fingerprint()
    hotter = simple.model_copy(update={"agents": [simple.agents[0].model_copy(update={"temperature": 1.5}),
                                                  *simple.agents[1:]]})
    assert hotter.fingerprint() != simple.fingerprint()


def _turn(agent, rnd, content, **kw):
    return {"agent": agent, "round": rnd, "content": content, "reasoning": content, **kw}


def test_du_messages_keep_each_agents_history(tmp_path):
    proto = _cfg(tmp_path).protocol.templates()
    r0 = [_turn("a", 0, "A0 \\boxed{3}", answer="3"), _turn("b", 0, "B0 \\boxed{4}", answer="4")]
    r1 = [_turn("a", 1, "A1", answer=None), _turn("b", 1, "B1", answer=None)]
    msgs = messages_for(proto, "numeric", "What is 3?", None, 2, "a", "be brief", [r0, r1])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == "A0 \\boxed{3}" and msgs[4]["content"] == "A1"
    assert "One agent solution: ```B0 \\boxed{4}```" in msgs[3]["content"]
    assert "A0" not in msgs[3]["content"]  # an agent does not read itself as another agent
    assert "```B1```" in msgs[5]["content"] and "\\boxed{answer}" in msgs[5]["content"]


def test_reconcile_prompt_shows_answers_confidences_and_own(tmp_path):
    proto = _cfg(tmp_path, protocol={"kind": "reconcile"}).protocol.templates()
    r0 = [_turn("a", 0, "{}", reasoning="because", answer="B", confidence=0.9),
          _turn("b", 0, "{}", reasoning="since", answer="C", confidence=None)]
    msgs = messages_for(proto, "multiple_choice", "Pick", ["x", "y", "z"], 1, "a", None, [r0])
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    text = msgs[0]["content"]
    assert "Options: A) x B) y C) z" in text and "confidence_level" in text
    peers, own = text.split("Your previous solution:")
    assert "since\nIts answer: C (confidence: unknown)" in peers and "because" not in peers
    assert "because\nIts answer: B (confidence: 0.9)" in own


def _found(text, task, **kw):
    got = extract_turn(text, task, **kw)
    return got.answer, got.source


def test_answer_extraction_order_and_cut_replies():
    assert extract_turn('{"reasoning": "r", "answer": "B", "confidence_level": "0.8"}', "multiple_choice") == \
        extract_turn('```json\n{"reasoning": "r", "answer": "B", "confidence_level": 0.8}\n```', "multiple_choice")
    got = extract_turn('{"reasoning": "r", "answer": "B", "confidence_level": "85%"}', "multiple_choice")
    assert (got.answer, got.source, got.confidence, got.reasoning) == ("B", "json", 0.85, "r")
    assert _found("so 5. The answer is 6. \\boxed{7}", "numeric") == ("7", "boxed")
    assert _found("so 5. The answer is 6.", "numeric") == ("6", "statement")
    assert _found("16 - 3 = 13 eggs left", "numeric") == ("13", "last_number")
    assert _found("16 - 3 = 13 eggs left", "numeric", guess=False) == (None, "none")
    assert _found("No, because penguins swim.", "yes_no") == ("no", "yes_no")
    assert _found("No, because penguins", "yes_no", guess=False) == ("no", "yes_no")  # said before the cut
    assert _found("I think it is the second one", "multiple_choice") == (None, "none")


def _write_turns(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"question_id": "q", "agent": "a", "round": i, "content": "x"}) + "\n")


def test_store_repairs_a_torn_tail_and_refuses_corruption_or_another_config(tmp_path):
    state = tmp_path / "state"
    _write_turns(state / "turns.jsonl", 2)
    with (state / "turns.jsonl").open("a") as fh:
        fh.write('{"question_id": "q", "agent": "a", "rou')  # a kill mid-write
    with TurnStore(state, {"v": 1}) as store:
        assert store.repaired_bytes == len('{"question_id": "q", "agent": "a", "rou')
        assert sorted(store.turns) == [("q", "a", 0), ("q", "a", 1)]
        with pytest.raises(StateError, match="another debate run"):
            TurnStore(state, {"v": 1})
        store.add_turn({"question_id": "q", "agent": "a", "round": 2, "content": "y"})
        with pytest.raises(RuntimeError, match="asked twice"):
            store.add_turn({"question_id": "q", "agent": "a", "round": 2, "content": "y"})
    assert len((state / "turns.jsonl").read_text().splitlines()) == 3
    with pytest.raises(StateError, match=r"differs in:\n  v: 1 -> 2"):
        TurnStore(state, {"v": 2})
    lines = (state / "turns.jsonl").read_text().splitlines()
    (state / "turns.jsonl").write_text("\n".join([lines[0], "not json", lines[2]]) + "\n")
    with pytest.raises(StateError, match=r"turns\.jsonl: line 2: not JSON"):
        TurnStore(state, {"v": 1})


def test_gate_bounds_concurrency_and_rate():
    async def main():
        gate = Gate(2, requests_per_second=20)
        starts = []

        async def one():
            await gate.acquire()
            starts.append(time.monotonic())
            try:
                await asyncio.sleep(0.05)
            finally:
                gate.release()

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(8)))
        return gate, [t - t0 for t in sorted(starts)]

    gate, starts = asyncio.run(main())
    assert gate.peak_in_flight == 2 and gate.admitted == 8
    # 20 starts/s: start k never comes before k * 50 ms (timer wake-ups may only make starts later).
    assert all(t >= k * 0.05 - 0.002 for k, t in enumerate(starts)), starts
    assert starts[-1] < 7 * 0.05 + 0.5  # and the limit does not stall them either


def test_backoff_doubles_with_jitter_and_honours_retry_after():
    limits = EndpointLimits(backoff_initial_s=1.0, backoff_max_s=5.0)
    rng = random.Random(0)
    delays = [backoff_delay(limits, k, rng, None) for k in range(5)]
    for k, d in enumerate(delays):
        full = min(2**k, 5.0)
        assert full / 2 <= d <= full
    assert backoff_delay(limits, 0, rng, 2.5) == 2.5 and backoff_delay(limits, 0, rng, 60) == 5.0


def test_built_mag_is_graded_and_hashes_content_not_timestamps(tmp_path):
    cfg = _cfg(tmp_path)
    q = EvalQuestion(0, "gsm8k-0", "numeric", "What is 3 + 4?", "7")

    def turns(stamp):
        return {(a, r): {"question_id": q.id, "agent": a, "round": r, "question_sha": question_sha(q),
                         "content": ("So \\boxed{7}" if a == "a" else "I get \\boxed{8}") if r == 0 else " ",
                         "finish_reason": "stop", "usage": {"prompt_tokens": 5, "completion_tokens": 3},
                         "started_at": stamp, "finished_at": stamp, "endpoint": "http://127.0.0.1:1/v1",
                         "attempts": 1, "seed": request_seed(0, 0, q.id, r)}
                for a in ("a", "b") for r in range(2)}

    mag = build_mag(q, cfg, turns("2026-01-01T00:00:00"))
    assert [r.label.text for r in mag.responses] == ["correct", "incorrect", "missing", "missing"]
    assert mag.responses[0].meta["answer_source"] == "boxed" and mag.responses[2].meta["usage"]["prompt_tokens"] == 5
    assert mag.generation["protocol"] == "du" and len(mag.generation["template_sha256"]) == 64
    later = build_mag(q, cfg, turns("2027-01-01T00:00:00"))
    assert later.generation["content_sha256"] == mag.generation["content_sha256"]
    assert later.responses[0].meta != mag.responses[0].meta
    # The generic JSONL reader reads it back unchanged (meta and generation included).
    from magdi_dist.mag.readers import read_mags, write_mags_jsonl

    write_mags_jsonl([mag], tmp_path / "m.jsonl")
    back = read_mags([tmp_path / "m.jsonl"]).mags[0]
    assert back.generation == mag.generation and back.responses[0].meta == mag.responses[0].meta
