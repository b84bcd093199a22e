"""Readers on the real shared teacher files (and a few small built ones): parsing, discovery, counts,
gold extraction, JSONL round trips, pickle == JSON, and format detection."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.readers import (
    FORMATS,
    detect_format,
    iter_mags,
    read_mags,
    write_mags_jsonl,
)
from magdi_dist.mag.readers.debate import gold_from_solution
from magdi_dist.mag.schema import Label
from magdi_dist.mag.stats import format_table, summarize

MAGDI = ["Aqua_gpt4o_round_2.json", "ECQA_gpt4o_round_2.json", "GSM8k_gpt4o_round_2.json", "SQA_gpt4o_round_2.json"]
PICKLES = ["Aqua_round_2.pkl", "ECQA_round_2.pkl", "GSM8k_round_2.pkl", "SQA_round_2.pkl"]
DEBATE = [
    "gsm_3_2_100.json",
    "gsm_3_3_top100.json",
    "gsm_llama32_3b_agents3_rounds3.json",
    "gsm_v4_stateful_3_4_top_100_majority_error.json",
]
ALL = (
    [("magdi_layout/" + f, "magdi") for f in MAGDI]
    + [("reconcile_pickle/" + f, "reconcile_pickle") for f in PICKLES]
    + [("debate_du/" + f, "debate") for f in DEBATE]
)
# (questions, non-missing responses): gpt3 alone speaks in round 1, on 2-8 questions
MAGDI_COUNTS = {"Aqua": (30, 98), "ECQA": (30, 98), "GSM8k": (30, 92), "SQA": (30, 95)}
# (questions, rounds): every agent answers every round
DEBATE_SHAPES = {DEBATE[0]: (100, 2), DEBATE[1]: (100, 3), DEBATE[2]: (20, 3), DEBATE[3]: (100, 4)}
TASKS = {"Aqua": "multiple_choice", "ECQA": "multiple_choice", "GSM8k": "numeric", "SQA": "yes_no"}

_cache: dict[str, list] = {}


def mags_of(path: Path) -> list:
    """Each shared file is parsed once per session (the suite stays fast on 2 cores)."""
    key = str(path)
    if key not in _cache:
        _cache[key] = read_mags([path]).mags
    return _cache[key]


@pytest.mark.parametrize(("name", "fmt"), ALL)
def test_every_shared_file_parses_strictly(name: str, fmt: str, shared_data: Path) -> None:
    path = shared_data / "mag" / name
    result = read_mags([path], strict=True)
    _cache[str(path)] = result.mags
    assert result.rejected == [] and result.records_in == len(result.mags) > 0
    stem = path.stem
    for i, mag in enumerate(result.mags):
        assert mag.id == f"{stem}-{i}"
        assert mag.source is not None and (mag.source.file, mag.source.record, mag.source.format) == (str(path), i, fmt)
        # graded and completed: every node labelled, the grid in (round, agent) order
        grid = [(r.round, r.agent) for r in mag.responses]
        assert grid == [(k, a) for k in range(mag.num_rounds) for a in mag.agents]
        assert all(r.label is not None for r in mag.responses)
        assert all((r.label is Label.MISSING) == r.missing for r in mag.responses)


@pytest.mark.parametrize("name", MAGDI)
def test_magdi_agents_rounds_and_counts(name: str, shared_data: Path) -> None:
    mags = mags_of(shared_data / "mag" / "magdi_layout" / name)
    family = name.split("_")[0]
    n, responses = MAGDI_COUNTS[family]
    assert len(mags) == n
    assert sum(not r.missing for m in mags for r in m.responses) == responses
    assert {tuple(m.agents) for m in mags} == {("claude", "gpt3", "bard")}
    assert {m.num_rounds for m in mags} == {2}  # every record on the file's grid
    assert all(len(m.responses) == 6 for m in mags)
    assert {m.task for m in mags} == {TASKS[family]}  # from the file name
    assert all(m.question for m in mags)
    assert all((m.options is not None) == (family in ("Aqua", "ECQA")) for m in mags)
    # round 1 has only gpt3 where the discussion went on; elsewhere everybody is silent
    # (early consensus): both are missing nodes, not a smaller graph
    went_on = [m for m in mags if any(r.round == 1 and not r.missing for r in m.responses)]
    assert 0 < len(went_on) < len(mags)
    for m in mags:
        r1 = {r.agent: r.missing for r in m.responses if r.round == 1}
        assert r1 == {"claude": True, "gpt3": m not in went_on, "bard": True}


@pytest.mark.parametrize("name", DEBATE)
def test_debate_shapes(name: str, shared_data: Path) -> None:
    mags = mags_of(shared_data / "mag" / "debate_du" / name)
    n, rounds = DEBATE_SHAPES[name]
    assert len(mags) == n
    assert {tuple(m.agents) for m in mags} == {("agent0", "agent1", "agent2")}
    assert {m.num_rounds for m in mags} == {rounds}  # trailing user turns add no round
    assert not any(r.missing for m in mags for r in m.responses)
    assert {m.task for m in mags} == {"numeric"}
    # gold: the text after the last ####, a plain number on GSM8K
    assert all(m.gold_answer.lstrip("-").replace(".", "").isdigit() for m in mags)


def test_debate_gold_and_boxed_answers(shared_data: Path) -> None:
    mags = mags_of(shared_data / "mag" / "debate_du" / DEBATE[0])
    first = mags[0]
    assert first.question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert first.gold_answer == "18"
    assert first.responses[0].answer == "18" and first.responses[0].label is Label.CORRECT
    assert first.responses[0].reasoning.endswith("Answer: \\boxed{18}.")
    assert gold_from_solution("So 1,000 + 234 = 1,234.\n#### 1,234 ") == "1234"
    assert gold_from_solution("#### 3 #### 5") == "5"  # the last marker wins
    # answers without any \boxed{} are None, and graded incorrect (the agent did speak)
    unboxed = [r for m in mags for r in m.responses if r.answer is None]
    assert len(unboxed) == 4 and all(r.label is Label.INCORRECT for r in unboxed)


def test_debate_consecutive_assistant_turns_are_rounds(shared_data: Path) -> None:
    """gsm_v4 record 64: agent0 answered twice in a row (no user turn between): rounds 0 and 1."""
    path = shared_data / "mag" / "debate_du" / DEBATE[3]
    raw = list(json.loads(path.read_text(encoding="utf-8")).values())[64][0][0]
    assert [m["role"] for m in raw][:3] == ["user", "assistant", "assistant"]
    mag = mags_of(path)[64]
    texts = [r.reasoning for r in mag.responses if r.agent == "agent0"]
    assert texts == [m["content"] for m in raw if m["role"] == "assistant"]
    assert texts[1] == "74"


@pytest.mark.parametrize(("name", "fmt"), ALL)
def test_jsonl_round_trip(name: str, fmt: str, shared_data: Path, tmp_path: Path) -> None:
    mags = mags_of(shared_data / "mag" / name)
    out = tmp_path / "mags.jsonl"
    assert write_mags_jsonl(mags, out) == len(mags)
    again = read_mags([out]).mags
    assert again == mags  # provenance included: source survives the round trip
    out2 = tmp_path / "again.jsonl"
    write_mags_jsonl(again, out2)
    assert out2.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("name", PICKLES)
def test_pickle_equals_json(name: str, shared_data: Path) -> None:
    family = name.split("_")[0]
    js = shared_data / "mag" / "magdi_layout" / f"{family}_gpt4o_round_2.json"
    pkl = shared_data / "mag" / "reconcile_pickle" / name
    from_json = mags_of(js)
    from_pkl = mags_of(pkl)
    assert len(from_pkl) == len(from_json)
    for a, b in zip(from_pkl, from_json, strict=True):
        assert a.question is None  # the pickles carry no question text
        assert a.gold_answer == b.gold_answer and a.task == b.task
        assert a.responses == b.responses  # agent, round, reasoning, answer and label
    # questions= re-joins the text by record index (here keyed by the pickle's file name)
    questions = [m.question for m in from_json]
    joined = read_mags([pkl], questions={pkl.name: questions}).mags
    assert [m.question for m in joined] == questions
    assert read_mags([pkl], questions=dict(enumerate(questions))).mags[3].question == questions[3]


def test_pickle_records_match_the_json_records_raw(shared_data: Path) -> None:
    """The raw view too: each pickle record's outputs are the JSON record's outputs."""
    for family in ("Aqua", "ECQA", "GSM8k", "SQA"):
        with (shared_data / "mag" / "reconcile_pickle" / f"{family}_round_2.pkl").open("rb") as fh:
            pkl = pickle.load(fh)  # trusted fixture, compared against the library's safe loader
        js = json.loads((shared_data / "mag" / "magdi_layout" / f"{family}_gpt4o_round_2.json").read_text())
        for p, j in zip(pkl, js, strict=True):
            outs = {k: (v["reasoning"], v["answer"]) for k, v in p.items() if "_output_" in k}
            assert outs == {k: (v["reasoning"], v["answer"]) for k, v in j.items() if "_output_" in k}


@pytest.mark.parametrize(("name", "fmt"), ALL)
def test_detection(name: str, fmt: str, shared_data: Path) -> None:
    assert detect_format(shared_data / "mag" / name) == fmt


def test_detection_is_by_content_not_extension(shared_data: Path, tmp_path: Path) -> None:
    mags = mags_of(shared_data / "mag" / "debate_du" / DEBATE[2])[:3]
    jsonl_as_json = tmp_path / "looks_like.json"
    write_mags_jsonl(mags, jsonl_as_json)
    assert detect_format(jsonl_as_json) == "jsonl"
    debate_as_txt = tmp_path / "debate.txt"
    debate_as_txt.write_bytes((shared_data / "mag" / "debate_du" / DEBATE[2]).read_bytes())
    assert detect_format(debate_as_txt) == "debate"
    pretty = tmp_path / "pretty.json"  # a pretty-printed debate document
    pretty.write_text(json.dumps({"q?": [[[{"role": "user", "content": "x"}]], "#### 1"]}, indent=2))
    assert detect_format(pretty) == "debate"
    pkl_no_ext = tmp_path / "run_output"
    pkl_no_ext.write_bytes((shared_data / "mag" / "reconcile_pickle" / PICKLES[0]).read_bytes())
    assert detect_format(pkl_no_ext) == "reconcile_pickle"


def test_format_override(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "mag" / "magdi_layout" / MAGDI[2]
    forced = read_mags([path], format="magdi").mags
    assert forced == mags_of(path)
    # forcing the wrong format is honoured (and fails loudly in strict mode)
    with pytest.raises(MAGInputError, match="expected an object"):
        read_mags([path], format="debate")
    # an extension-less JSONL is read when told what it is
    odd = tmp_path / "mags.data"
    write_mags_jsonl(forced[:5], odd)
    assert read_mags([odd], format="jsonl").mags == forced[:5]
    with pytest.raises(MAGInputError, match="unknown format"):
        read_mags([path], format="csv")
    assert set(FORMATS) == {"magdi", "debate", "reconcile_pickle", "jsonl"}


def test_task_override_and_inference(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "mag" / "magdi_layout" / MAGDI[2]
    renamed = tmp_path / "teacher_run.json"  # no family in the name: inferred from the gold
    renamed.write_bytes(path.read_bytes())
    assert {m.task for m in read_mags([renamed]).mags} == {"numeric"}
    assert {m.task for m in read_mags([renamed], task="math").mags} == {"math"}


def test_agent_names_with_underscores_and_many_rounds(tmp_path: Path) -> None:
    rec = {"question": "Is water wet?", "gold_answer": "yes"}
    agents = ["gpt_4o_mini", "llama_3_8b_output", "x"]
    for k in range(4):
        for a in agents:
            rec[f"{a}_output_{k}"] = {"reasoning": f"{a} thinks, round {k}.", "answer": "yes" if k else "no"}
    path = tmp_path / "anything.json"
    path.write_text(json.dumps([rec]))
    (mag,) = read_mags([path]).mags
    assert mag.agents == agents and mag.num_rounds == 4 and mag.task == "yes_no"
    assert [r.label for r in mag.responses[:3]] == [Label.INCORRECT] * 3
    assert [r.label for r in mag.responses[3:]] == [Label.CORRECT] * 9


def test_iter_mags_streams_the_same(shared_data: Path) -> None:
    path = shared_data / "mag" / "magdi_layout" / MAGDI[0]
    assert list(iter_mags(path)) == mags_of(path)


def test_summary_and_table(shared_data: Path) -> None:
    paths = [shared_data / "mag" / "magdi_layout" / MAGDI[3], shared_data / "mag" / "debate_du" / DEBATE[0]]
    summary = summarize(read_mags(paths))
    assert summary["agents"] == ["claude", "gpt3", "bard", "agent0", "agent1", "agent2"]
    assert summary["mags"] == 130 and summary["rounds"] == 2 and summary["rejected"] == 0
    assert summary["responses"] == 95 + 600
    assert sum(summary["label_counts"].values()) == summary["nodes"]
    json.dumps(summary)  # JSON-ready
    table = format_table(summary)
    assert "MAGs" in table and "round 1 accuracy" in table and "claude" in table
