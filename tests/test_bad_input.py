"""Bad teacher input, one kind per case, each built here in a small file.

Every case mixes good records around the bad one. Strict mode must raise a MAGInputError naming the
file, the record and the field; lenient mode must keep every good record, write the bad one to the
rejects JSONL with its reason, and account for every record read.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mag_records import (
    debate_entry,
    debate_with,
    delitem,
    jsonl_record,
    jsonl_with,
    magdi_record,
    magdi_with,
    rename,
    setitem,
    write_debate,
    write_jsonl,
    write_magdi,
)

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.readers import FORMATS, ReadLimits, read_mags
from magdi_dist.mag.schema import MAG

# --- cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    build: Callable[[Path], Path]
    field: str | None  # expected field (None: whole-file problem)
    reason: str  # substring of the reason
    record: int | str | None = 1
    good: int = 2
    kwargs: dict = field(default_factory=dict)


def _dup_jsonl(rec: dict) -> None:
    rec["responses"].append(copy.deepcopy(rec["responses"][0]))


def _truncated(tmp: Path) -> Path:
    text = json.dumps([magdi_record(0), magdi_record(1)])
    path = tmp / "GSM8k_trunc.json"
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    return path


def _record_not_object(tmp: Path) -> Path:
    return write_magdi(tmp / "GSM8k_list.json", [magdi_record(0), ["not", "a", "record"], magdi_record(2)])


def _not_utf8(tmp: Path) -> Path:
    data = json.dumps([magdi_record(0)]).encode().replace(b"apples", b"appl\xffes")
    path = tmp / "GSM8k_latin.json"
    path.write_bytes(data)
    return path


def _jsonl_bad_bytes(tmp: Path) -> Path:
    good = [json.dumps(jsonl_record(i)).encode() for i in range(3)]
    return write_jsonl(tmp / "bytes.jsonl", [good[0], good[1].replace(b"What", b"Wh\xe9t"), good[2]])


def _jsonl_truncated_line(tmp: Path) -> Path:
    good = [json.dumps(jsonl_record(i)).encode() for i in range(3)]
    return write_jsonl(tmp / "cut.jsonl", [good[0], good[1][:40], good[2]])


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _evil_pickle(tmp: Path) -> Path:
    path = tmp / "GSM8k_evil.pkl"
    path.write_bytes(pickle.dumps([magdi_record(0), {"x": _Evil(str(tmp / "pwned"))}]))
    return path


def _ordered_dict_pickle(tmp: Path) -> Path:
    path = tmp / "GSM8k_od.pkl"
    path.write_bytes(pickle.dumps([collections.OrderedDict(magdi_record(0))]))
    return path


def _undetectable(tmp: Path) -> Path:
    path = tmp / "mystery.bin"
    path.write_bytes(b"\x00\x01garbage that is no known format")
    return path


def _huge_reasoning(rec: dict) -> None:
    rec["gpt3_output_1"]["reasoning"] = "x" * 1_100_000  # over the default 1 MB


def _many_responses(rec: dict) -> None:
    rec["responses"] = [{"agent": f"a{k}", "round": 0, "reasoning": "r", "answer": "1"} for k in range(40)]


def _debate_no_role(entry: list) -> None:
    del entry[0][1][2]["role"]


def _debate_no_gold_marker(entry: list) -> None:
    entry[1] = "The answer is 6."


# --- hostile JSON: past the parser's recursion limit, past ReadLimits.max_depth, NaN and Infinity ---

DEEP = 100_000  # levels: Python's JSON parser gives up (RecursionError) near 1,000


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def _jsonl_deep_line(tmp: Path) -> Path:
    good = [json.dumps(jsonl_record(i)).encode() for i in range(3)]
    deep = good[1][:-1] + b', "generation": {"x": ' + _nested(DEEP).encode() + b"}}"
    return write_jsonl(tmp / "deep.jsonl", [good[0], deep, good[2]])


def _deep_document(tmp: Path) -> Path:
    """A magdi document whose middle record is nothing but nesting: its neighbours still read."""
    text = ",\n".join([json.dumps(magdi_record(0)), _nested(DEEP), json.dumps(magdi_record(2))])
    path = tmp / "GSM8k_deep.json"
    path.write_text(f"[\n{text}\n]", encoding="utf-8")
    return path


def _deep_debate(tmp: Path) -> Path:
    entries = [debate_entry(0), debate_entry(1), debate_entry(2)]
    parts = [f"{json.dumps(q)}: {json.dumps(v)}" for q, v in entries]
    parts[1] = f"{json.dumps(entries[1][0])}: {_nested(DEEP)}"
    path = tmp / "gsm_deep.json"
    path.write_text("{" + ", ".join(parts) + "}", encoding="utf-8")
    return path


def _deep_pickle(tmp: Path) -> Path:
    """The pickle machine builds nesting without recursion (EMPTY_LIST pushed N times, APPEND N-1
    times), so a pickle can carry what no recursive reader could walk."""
    data = pickle.dumps([magdi_record(0), "HOLE", magdi_record(2)], protocol=2)
    hole = b"X\x04\x00\x00\x00HOLE"  # BINUNICODE 'HOLE'
    path = tmp / "GSM8k_deep.pkl"
    path.write_bytes(data.replace(hole, b"]" * DEEP + b"a" * (DEEP - 1)))
    return path


def _jsonl_meta(value: str) -> Callable[[Path], Path]:
    """A JSONL file whose middle record carries ``value`` (raw JSON text) in a response's meta."""
    def build(tmp: Path) -> Path:
        good = [json.dumps(jsonl_record(i)) for i in range(3)]
        rec = jsonl_record(1)
        rec["responses"][0]["meta"] = {"score": "HOLE"}
        bad = json.dumps(rec).replace('"HOLE"', value)
        return write_jsonl(tmp / "meta.jsonl", [good[0].encode(), bad.encode(), good[2].encode()])

    return build


def _past_max_depth(rec: dict) -> None:
    rec["responses"][0]["meta"] = json.loads(_nested(80))  # parses, but deeper than ReadLimits.max_depth


CASES = {
    "magdi-missing-gold": Case(magdi_with(delitem("gold_answer")), "gold_answer", "missing"),
    "magdi-missing-question": Case(magdi_with(delitem("question")), "question", "missing"),
    "magdi-reasoning-wrong-type": Case(
        magdi_with(setitem("gpt3_output_1.reasoning", 42)), "gpt3_output_1.reasoning", "expected a string"
    ),
    "magdi-missing-reasoning": Case(
        magdi_with(setitem("bard_output_0", {"answer": "13"})),
        "bard_output_0.reasoning",
        "missing",
    ),
    "magdi-empty-reasoning": Case(
        magdi_with(setitem("claude_output_0.reasoning", "  \n")), "claude_output_0.reasoning", "empty"
    ),
    "magdi-output-not-object": Case(magdi_with(setitem("bard_output_0", "13")), "bard_output_0", "expected an object"),
    "magdi-unknown-key": Case(magdi_with(setitem("confidence", 0.9)), "confidence", "unknown key"),
    "magdi-negative-round": Case(
        magdi_with(rename("gpt3_output_1", "gpt3_output_-1")), "gpt3_output_-1", "non-negative integer"
    ),
    "magdi-round-gap": Case(magdi_with(rename("gpt3_output_1", "gpt3_output_2")), "gpt3_output_2", "without gaps"),
    "magdi-duplicate-agent-round": Case(
        magdi_with(setitem("gpt3_output_01", {"reasoning": "again", "answer": "13"})),
        "gpt3_output_01",
        "duplicate",
    ),
    "magdi-record-without-responses": Case(
        magdi_with(lambda rec: [rec.pop(k) for k in list(rec) if "_output_" in k]), None, "no responses"
    ),
    "magdi-record-not-object": Case(_record_not_object, None, "expected an object per record"),
    "magdi-gold-unparseable": Case(
        magdi_with(setitem("gold_answer", "thirteen-ish")), "gold_answer", "cannot be parsed"
    ),
    "magdi-huge-reasoning": Case(magdi_with(_huge_reasoning), "gpt3_output_1.reasoning", "over the limit"),
    "truncated-json": Case(_truncated, None, "truncated", record=None, good=0),
    "non-utf8-bytes": Case(_not_utf8, None, "byte 0xff", record=None, good=0),
    "undetectable-format": Case(_undetectable, None, "cannot detect", record=None, good=0),
    "jsonl-missing-gold": Case(jsonl_with(delitem("gold_answer")), "gold_answer", "required", record="q-1"),
    "jsonl-round-wrong-type": Case(
        jsonl_with(setitem("responses.1.round", "two")), "responses[1].round", "integer", record="q-1"
    ),
    "jsonl-negative-round": Case(
        jsonl_with(setitem("responses.1.round", -1)), "responses[1].round", "greater than", record="q-1"
    ),
    "jsonl-round-gap": Case(
        jsonl_with(setitem("responses.2.round", 2)), "responses[2].round", "without gaps", record="q-1"
    ),
    "jsonl-duplicate-agent-round": Case(jsonl_with(_dup_jsonl), "responses[3]", "duplicate", record="q-1"),
    "jsonl-edge-out-of-range": Case(
        jsonl_with(setitem("edges", [[0, 2], [1, 7]])), "edges[1]", "out of range", record="q-1"
    ),
    "jsonl-edge-backward": Case(jsonl_with(setitem("edges", [[2, 0]])), "edges[0]", "forward in time", record="q-1"),
    "jsonl-unknown-task": Case(jsonl_with(setitem("task", "poetry")), "task", "unknown task family", record="q-1"),
    "jsonl-unknown-field": Case(jsonl_with(setitem("teacher", "gpt4")), "teacher", "Extra inputs", record="q-1"),
    "jsonl-too-many-responses": Case(
        jsonl_with(_many_responses),
        "responses",
        "over the limit",
        record="q-1",
        kwargs={"limits": ReadLimits(max_responses=32)},
    ),
    "jsonl-non-utf8-line": Case(_jsonl_bad_bytes, None, "byte 0xe9", record=1),
    "jsonl-truncated-line": Case(_jsonl_truncated_line, None, "line 2", record=1),
    "debate-message-without-role": Case(debate_with(_debate_no_role), "agent_contexts[1][2].role", "no 'role'"),
    "debate-no-gold-marker": Case(debate_with(_debate_no_gold_marker), "gold_solution", "####"),
    "debate-not-a-pair": Case(debate_with(lambda e: e.append("extra")), None, "[agent_contexts, gold_solution]"),
    "jsonl-nested-100k": Case(_jsonl_deep_line, None, "too deep for the JSON parser", record=1),
    "jsonl-meta-infinity": Case(_jsonl_meta("Infinity"), "responses[0].meta.score", "not a finite", record="q-1"),
    "jsonl-meta-nan": Case(_jsonl_meta('[1, {"p": NaN}]'), "responses[0].meta.score[1].p", "nan", record="q-1"),
    "jsonl-meta-overflow": Case(_jsonl_meta('{"t": -1e999}'), "responses[0].meta.score.t", "-inf", record="q-1"),
    "jsonl-integer-of-5000-digits": Case(_jsonl_meta("9" * 5000), None, "Exceeds the limit", record=1),
    "jsonl-past-max-depth": Case(jsonl_with(_past_max_depth), "responses[0].meta", "64 levels deep", record="q-1"),
    "magdi-nested-100k": Case(_deep_document, None, "too deep for the JSON parser"),
    "magdi-gold-nan": Case(magdi_with(setitem("gold_answer", float("nan"))), "gold_answer", "nan is not a finite"),
    "debate-nested-100k": Case(_deep_debate, None, "too deep for the JSON parser"),
    "pickle-nested-100k": Case(_deep_pickle, "[0][0][0]", "levels deep (ReadLimits.max_depth)"),
    "pickle-os-system": Case(_evil_pickle, None, "system", record=None, good=0),
    "pickle-ordered-dict": Case(_ordered_dict_pickle, None, "collections.OrderedDict", record=None, good=0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_strict_raises_with_location(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = case.build(tmp_path)
    with pytest.raises(MAGInputError) as info:
        read_mags([path], strict=True, **case.kwargs)
    err = info.value
    msg = str(err)
    assert err.file == str(path) and str(path) in msg
    assert err.record == case.record
    if case.record is not None:
        assert f"record {case.record}" in msg
    assert err.field == case.field, msg
    if case.field is not None:
        assert repr(case.field) in msg
    assert case.reason in err.reason, msg
    assert not (tmp_path / "pwned").exists()  # the malicious pickle never ran


@pytest.mark.parametrize("name", list(CASES))
def test_lenient_rejects_and_keeps_the_good(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = case.build(tmp_path)
    rejects = tmp_path / "out" / "rejects.jsonl"
    result = read_mags([path], strict=False, rejects=rejects, **case.kwargs)
    assert result.records_in == len(result.mags) + len(result.rejected)
    assert len(result.mags) == case.good
    assert len(result.rejected) == 1
    lines = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert lines == result.rejected
    (entry,) = lines
    assert entry["file"] == str(path) and entry["record"] == case.record and entry["field"] == case.field
    assert case.reason in entry["reason"]
    assert "raw_excerpt" in entry and len(entry["raw_excerpt"] or "") <= 500
    assert not (tmp_path / "pwned").exists()


def test_cases_reach_every_reader_and_no_two_fail_the_same_way(tmp_path: Path) -> None:
    """What the cases exercise, as the readers report it: every reader format (and format detection)
    rejects at least one case, each case goes to the reader its name says, strict and lenient mode
    report the same failure, and no two cases fail the same way (format, field and reason with the
    numbers masked), so no case merely repeats another."""
    kinds: dict[tuple, list[str]] = {}
    for name, case in CASES.items():
        (tmp_path / name).mkdir()
        path = case.build(tmp_path / name)
        with pytest.raises(MAGInputError) as info:
            read_mags([path], strict=True, **case.kwargs)
        (entry,) = read_mags([path], strict=False, **case.kwargs).rejected
        assert {k: entry[k] for k in ("file", "record", "field", "reason")} == info.value.as_dict(), name
        prefix = name.split("-")[0]
        expected = {"magdi": "magdi", "jsonl": "jsonl", "debate": "debate", "pickle": "reconcile_pickle"}
        if prefix in expected:
            assert entry["format"] == expected[prefix], name
        kind = (entry["format"], entry["field"], re.sub(r"\d+", "#", entry["reason"]))
        kinds.setdefault(kind, []).append(name)
    assert {fmt for fmt, _, _ in kinds} == {*FORMATS, "unknown"}  # "unknown": detection itself failed
    assert [names for names in kinds.values() if len(names) > 1] == []


def test_unreadable_file_does_not_cost_other_files(tmp_path: Path) -> None:
    good = write_magdi(tmp_path / "GSM8k_good.json", [magdi_record(i) for i in range(4)])
    bad = _truncated(tmp_path)
    result = read_mags([good, bad, good], strict=False)
    assert (len(result.mags), len(result.rejected), result.records_in) == (8, 1, 9)


def test_unknown_task_argument_is_refused(tmp_path: Path) -> None:
    path = write_magdi(tmp_path / "x.json", [magdi_record(0)])
    for strict in (True, False):
        with pytest.raises(MAGInputError, match="unknown task"):
            read_mags([path], task="poetry", strict=strict)


def test_limits_are_configurable(tmp_path: Path) -> None:
    path = write_magdi(tmp_path / "GSM8k_x.json", [magdi_record(0)])
    with pytest.raises(MAGInputError, match="max_text_chars"):
        read_mags([path], limits=ReadLimits(max_text_chars=10))
    assert len(read_mags([path]).mags) == 1


def test_rejects_file_appends(tmp_path: Path) -> None:
    path = CASES["magdi-unknown-key"].build(tmp_path)
    rejects = tmp_path / "rejects.jsonl"
    read_mags([path], strict=False, rejects=rejects)
    read_mags([path], strict=False, rejects=rejects)
    assert len(rejects.read_text().splitlines()) == 2


def test_hostile_json_is_one_reject_on_the_command_line(tmp_path: Path) -> None:
    """``inspect --lenient`` over every hostile file at once: each costs one record, the counts add
    up, and ``convert`` never writes a number the input did not hold (Infinity as null)."""
    from typer.testing import CliRunner

    from magdi_dist.cli import app

    builds = [_jsonl_deep_line, _deep_document, _deep_debate, _deep_pickle, _jsonl_meta("Infinity")]
    paths = []
    for i, build in enumerate(builds):
        (tmp_path / str(i)).mkdir()
        paths.append(str(build(tmp_path / str(i))))
    rejects = tmp_path / "rejects.jsonl"
    result = CliRunner().invoke(app, ["inspect", *paths, "--lenient", "--rejects", str(rejects), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["records_in"], summary["mags"], summary["rejected"]) == (15, 10, 5)
    assert sorted(json.loads(line)["file"] for line in rejects.read_text().splitlines()) == sorted(paths)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["convert", paths[-1], "--out", str(out)])
    assert result.exit_code != 0 and "responses[0].meta.score" in result.output
    assert not out.exists() or "null" not in out.read_text()


def test_a_mag_cannot_hold_nan_or_infinity() -> None:
    """The schema itself refuses them in meta and generation, so no writer (debate, synth) can emit one."""
    base = jsonl_record(0)
    with pytest.raises(ValueError, match=r"usage\.latency: inf is not a finite number"):
        MAG.model_validate({**base, "responses": [{**base["responses"][0], "meta": {"usage": {"latency": 1e999}}}]})
    with pytest.raises(ValueError, match=r"agents\[0\]\.temperature: nan"):
        MAG.model_validate({**base, "generation": {"agents": [{"temperature": float("nan")}]}})


def test_debate_without_boxed_answer_is_incorrect_not_missing(tmp_path: Path) -> None:
    entry = debate_entry(3)
    entry[1][0][0][3]["content"] = "I think it is eight."
    (mag,) = read_mags([write_debate(tmp_path / "d.json", [entry])]).mags
    node = next(r for r in mag.responses if r.agent == "agent0" and r.round == 1)
    assert node.answer is None and node.label is not None and node.label.text == "incorrect"
