"""An independent reading of the raw teacher files, checked against the library's ``summarize``.

The reference side below uses only json / pickle / re and per-family rules that are enough for this
data; it deliberately shares no code with magdi_dist, so a bug in the readers or the grader cannot
hide behind the same bug in the check.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

OUTPUT = re.compile(r"^(.+)_output_(\d+)$")
REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> list[Path]:
    mag = root / "mag"
    return (
        sorted(mag.glob("magdi_layout/*.json"))
        + sorted(mag.glob("reconcile_pickle/*.pkl"))
        + sorted(mag.glob("debate_du/*.json"))
    )


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _number(text: str | None) -> float | None:
    """A numeric answer: a clock time ("2:00 pm" -> 2.0, GSM8K writes times as hours), else the one
    number in the text after dropping LaTeX text wrappers, $, % and thousands separators ("30
    \\text{ hours}", "Jeff gets 80 dollars"). Two numbers ("160 \\leq d \\leq 230") are no answer."""
    if text is None:
        return None
    s = re.sub(r"\\text\{([^{}]*)\}", r" \1 ", text)
    s = s.replace("\\,", " ").replace("\\ ", " ").replace("\\%", "").replace("%", "")
    s = s.replace("$", "").replace(",", "").strip()
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})\s*(?:[ap]m)?", s)
    if clock:
        return int(clock.group(1)) + int(clock.group(2)) / 60
    numbers = re.findall(r"-?\d+(?:\.\d+)?", s)
    return float(numbers[0]) if len(numbers) == 1 else None


def _family(name: str) -> str:
    stem = name.split("_")[0].lower()
    return {"sqa": "yes_no", "ecqa": "mc", "aqua": "mc", "gsm8k": "numeric", "gsm": "numeric"}[stem]


def _correct(family: str, answer: str | None, gold: str) -> bool:
    if answer is None:
        return False
    if family == "yes_no":
        return answer.strip().lower() == gold.strip().lower()
    if family == "mc":
        return answer.strip() == gold.strip()
    value = _number(answer)
    return value is not None and value == _number(gold)


def _grid(mags: list[tuple[str, list[tuple[str, int, bool]]]]) -> dict:
    """Statistics from (gold, [(agent, round, correct)]) per MAG."""
    agents: list[str] = []
    rounds = 0
    correct: dict[int, int] = {}
    answered: dict[int, int] = {}
    mixed = nodes = 0
    # every MAG of a file is completed on the file's agents x rounds grid (missing nodes included)
    file_rounds = max((r for responses in mags for _, r, _ in responses), default=-1) + 1
    for responses in mags:
        nodes += len({a for a, _, _ in responses}) * file_rounds
        kinds = set()
        for agent, rnd, ok in responses:
            if agent not in agents:
                agents.append(agent)
            rounds = max(rounds, rnd + 1)
            answered[rnd] = answered.get(rnd, 0) + 1
            correct[rnd] = correct.get(rnd, 0) + ok
            kinds.add(ok)
        mixed += kinds == {True, False}
    return {
        "mags": len(mags),
        "responses": sum(answered.values()),
        "nodes": nodes,
        "agents": agents,
        "rounds": rounds,
        "per_round_accuracy": [correct.get(r, 0) / answered[r] if answered.get(r) else None for r in range(rounds)],
        "mixed_mags": mixed,
    }


def independent_summary(path: Path) -> dict:
    if path.suffix == ".pkl":
        with path.open("rb") as fh:
            records = pickle.load(fh)  # trusted fixture; the library itself never uses pickle.load
    else:
        with path.open(encoding="utf-8") as fh:
            records = json.load(fh)
    mags = []
    if isinstance(records, list):  # magdi layout (JSON or pickle)
        family = _family(path.name)
        for rec in records:
            found = []
            for key, value in rec.items():
                m = OUTPUT.match(key)
                if m:
                    found.append((int(m.group(2)), key, m.group(1), value["answer"]))
            # agent order = order of first appearance in the earliest round
            found.sort(key=lambda t: t[0])
            mags.append([(agent, rnd, _correct(family, ans, rec["gold_answer"])) for rnd, _, agent, ans in found])
    else:  # debate layout
        for contexts, solution in records.values():
            gold = solution.split("####")[-1].strip().replace(",", "")
            responses = []
            for a, context in enumerate(contexts):
                turns = [m["content"] for m in context if m["role"] == "assistant"]
                for rnd, content in enumerate(turns):
                    responses.append((f"agent{a}", rnd, _correct("numeric", _last_boxed(content), gold)))
            mags.append(sorted(responses, key=lambda t: t[1]))
    return _grid(mags)


def _library_summary(path: Path) -> dict:
    from magdi_dist.mag.readers import read_mags
    from magdi_dist.mag.stats import summarize

    return summarize(read_mags([path]))


KEYS = ("mags", "responses", "nodes", "agents", "rounds", "per_round_accuracy", "mixed_mags")


def _compare(ours: dict, lib: dict, name: str) -> None:
    for key in KEYS:
        if key == "per_round_accuracy":
            assert lib[key] == pytest.approx(ours[key]), f"{name}: {key}"
        else:
            assert lib[key] == ours[key], f"{name}: {key}"


FILES = [
    "magdi_layout/Aqua_gpt4o_round_2.json",
    "magdi_layout/ECQA_gpt4o_round_2.json",
    "magdi_layout/GSM8k_gpt4o_round_2.json",
    "magdi_layout/SQA_gpt4o_round_2.json",
    "reconcile_pickle/Aqua_round_2.pkl",
    "reconcile_pickle/ECQA_round_2.pkl",
    "reconcile_pickle/GSM8k_round_2.pkl",
    "reconcile_pickle/SQA_round_2.pkl",
    "debate_du/gsm_3_2_100.json",
    "debate_du/gsm_3_3_top100.json",
    "debate_du/gsm_llama32_3b_agents3_rounds3.json",
    "debate_du/gsm_v4_stateful_3_4_top_100_majority_error.json",
]
def test_the_shared_files_are_the_expected_twelve(shared_data: Path) -> None:
    assert [str(p.relative_to(shared_data / "mag")) for p in _files(shared_data)] == FILES


@pytest.mark.parametrize("name", FILES)
def test_library_matches_the_independent_reading(name: str, shared_data: Path) -> None:
    path = shared_data / "mag" / name
    lib = _library_summary(path)
    assert lib["rejected"] == 0 and lib["records_in"] == lib["mags"]
    assert sum(lib["label_counts"].values()) == lib["nodes"]
    _compare(independent_summary(path), lib, name)


def test_pickles_agree_with_their_json(shared_data: Path) -> None:
    """Same run, two exports: identical statistics."""
    for pkl in sorted((shared_data / "mag" / "reconcile_pickle").glob("*.pkl")):
        task = pkl.name.split("_")[0]
        (js,) = (shared_data / "mag" / "magdi_layout").glob(f"{task}_*.json")
        assert independent_summary(pkl) == independent_summary(js)


def test_cli_inspect_json_matches(shared_data: Path) -> None:
    """``magdi-dist inspect --json FILE`` prints the summary; the lead wires the command."""
    path = shared_data / "mag" / "magdi_layout" / "GSM8k_gpt4o_round_2.json"
    proc = subprocess.run(
        [sys.executable, "-m", "magdi_dist.cli", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _compare(independent_summary(path), json.loads(proc.stdout), path.name)
