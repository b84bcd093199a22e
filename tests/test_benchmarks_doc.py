"""docs/benchmarks.md shows no number that no raw file in benchmarks/results/ holds (issue 24).

What counts as a number: every decimal in the document's text and tables (``1.159``, ``45.8%``,
``2 x 386``, ``1,919``, ``4.27e+03``, a range ``0.91-1.13`` is two numbers; a minus is a sign unless
it follows a digit or a ``+``), except

* fenced code blocks, inline code spans and HTML comments (commands, config keys, paths, markers);
* dates (``2026-11-30``) and clock times (``02:03``, ``02:23:25``);
* commit hashes: a word of 7-40 hex digits with at least one digit and one letter (``936e7b0``,
  ``908036d+dirty``);
* versions: numbers with two or more dots (``3.11.7``, ``2.13.0+cpu``);
* names: digits glued to a letter or underscore before them (``fp32``, ``bf16``, ``avx512_bf16``,
  ``GSM8K``, ``r16``, ``SmolLM2``) or joined by a hyphen to a word before them (``tiny-20m``,
  ``ZeRO-2``, ``SmolLM2-135M``); a lone ``x`` before digits (``x1.49``, a multiplier) is no name;
* references: ``issue 14``, ``item 4``, ``items 1, 3 and 5``, ``#24``, and the marker of an ordered
  list item at the start of a line (``1. ``).

What holds a number: a numeric value (int or float, not bool; or a dict key that is a number, such as
padding.json's group sizes; or a number in a figure's ``goal`` string, ``"<= 1.1"``) of a results
file, times one of SCALES (percent, milli, mega, giga, MiB
and GiB of bytes), equal to the number to the rounding shown (within half a unit of its last digit).
Which results files: in each hand-written section (heading to heading) only those the section names
(``results/<name>.json``), each of which must exist, so a figure must come from a run the reader is
pointed to. In the generated block (between the ``bench:begin`` / ``bench:end`` markers) summary.json,
numbers inside its strings included (there they are the labels and goals the figures' ``rows``
wrote), plus minutes of seconds; and that block must be exactly what benchmarks/report.py renders
from summary.json. What the rule cannot see: a wrong figure that equals, to the rounding shown,
another value of its section's files (ratios near 1 are many); test_most_digit_swaps_are_caught
measures how often that happens.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- bench:begin", "<!-- bench:end -->"
# percent, milli (ms of s), mega (M of a count), giga (GB, GFLOP/s), MiB and GiB of bytes; the generated
# block also shows minutes of seconds. Few scales: each one more lets a wrong figure be held by chance.
SCALES = (1.0, 100.0, 1e3, 1e-6, 1e-9, 2.0**-20, 2.0**-30)
BLOCK_SCALES = SCALES + (1 / 60,)

# A number starts after no word character or dot, or after a lone "x" (a multiplier); its minus is a sign
# unless it follows "+" ("+-15%"); digits with thousands commas, or with a decimal part; an exponent.
_NUMBER = re.compile(r"(?:(?<![\w.])|(?<=(?<![\w.])x))((?<!\+)-)?"
                     r"(\d{1,3}(?:,\d{3})+(?![\d,])|\d+(?:\.\d+)?)(?:[eE]([+-]?\d+))?")
_SKIP = [
    re.compile(r"```.*?```", re.S),  # fenced code
    re.compile(r"`[^`\n]*`"),  # inline code
    re.compile(r"<!--.*?-->", re.S),  # comments, the markers
    re.compile(r"\b\d{4}-\d{2}-\d{2}\b"),  # dates
    re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b"),  # clock times
    re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b(?:\+dirty)?"),  # commit hashes
    re.compile(r"\b\d+(?:\.\d+){2,}(?:\+\w+)?"),  # versions
    re.compile(r"(?<!\de)(?:(?<=[A-Za-wyz_])|(?<=[A-Za-z]x)|(?<=[A-Za-z_][A-Za-z0-9_]-))\d[\w.]*"),  # names
    re.compile(r"\b(?:[Ii]ssues?|[Ii]tems?|PR)\s+\d+(?:(?:,\s*|\s+and\s+)\d+)*|#\d+"),  # references
    re.compile(r"^\s*\d+\.\s", re.M),  # ordered list markers
]


def _blank(text: str) -> str:
    """``text`` with every skipped span replaced by spaces (positions kept for line numbers)."""
    for pattern in _SKIP:
        text = pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return text


def numbers(text: str) -> list[tuple[int, str, float, float]]:
    """(line, as shown, value, half a unit of its last digit) for every number of ``text``."""
    out = []
    blanked = _blank(text)
    for m in _NUMBER.finditer(blanked):
        sign, digits, exp = m.group(1), m.group(2).replace(",", ""), m.group(3)
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        value = float(digits) * (10.0 ** int(exp) if exp else 1.0) * (-1 if sign else 1)
        half = 0.5 * 10.0 ** (-decimals) * (10.0 ** int(exp) if exp else 1.0)
        out.append((blanked.count("\n", 0, m.start()) + 1, m.group(0), value, half))
    return out


def _leaves(obj, strings: bool, key: str = "") -> list[float]:
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, int | float):
        return [float(obj)] if math.isfinite(obj) else []
    if isinstance(obj, dict):  # a numeric key names a measured condition (padding.json's "by_group": {"32": ..})
        keys = [float(k) for k in obj if re.fullmatch(r"\d+(?:\.\d+)?", k)]
        return keys + [x for k, v in obj.items() for x in _leaves(v, strings, k)]
    if isinstance(obj, list):
        return [x for v in obj for x in _leaves(v, strings, key)]
    if isinstance(obj, str) and (strings or key == "goal"):  # a goal is the figure's own, written by its run
        return [v for _, _, v, _ in numbers(obj)]
    return []


def held_values(files: list[Path], strings: bool, scales: tuple[float, ...] = SCALES) -> list[float]:
    return sorted({v * s for f in files for v in _leaves(json.loads(f.read_text()), strings) for s in scales})


def _held(value: float, half: float, pool: list[float]) -> bool:
    lo = bisect.bisect_left(pool, value - half * (1 + 1e-9) - 1e-12)
    return lo < len(pool) and pool[lo] <= value + half * (1 + 1e-9) + 1e-12


def unheld(text: str, pool: list[float], first_line: int = 1) -> list[str]:
    return [f"line {line + first_line - 1}: {shown.strip()}" for line, shown, v, half in numbers(text)
            if not _held(v, half, pool)]


_CITED = re.compile(r"(?:benchmarks/)?results/([\w.-]+\.json)")
_HEADING = re.compile(r"^#{1,6} ", re.M)


def sections(text: str) -> list[tuple[int, str]]:
    """(first line, text) of each part of ``text`` from one markdown heading to the next."""
    starts = [0] + [m.start() for m in _HEADING.finditer(text) if m.start()]
    return [(text.count("\n", 0, a) + 1, text[a:b]) for a, b in zip(starts, starts[1:] + [len(text)], strict=True)]


def _parts() -> tuple[str, str, int]:
    """(hand-written text, generated block, the block's first line) of docs/benchmarks.md; in the
    hand-written text the block is blanked (its lines kept, so line numbers are the file's)."""
    text = DOC.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "one generated block"
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    hand = head + re.sub(r"[^\n]", " ", BEGIN + block + END) + tail
    return hand, BEGIN + block + END, head.count("\n") + 1


def _section_files(text: str) -> list[Path]:
    return [RESULTS / n for n in sorted(set(_CITED.findall(text))) if (RESULTS / n).is_file()]


def test_the_number_rule_reads_what_it_says():
    """The extraction itself, on the cases its docstring names (a rule nobody checked reads nothing)."""
    got = [shown.strip() for _, shown, _, _ in numbers(
        "1.159x, 45.8% and 0.91-1.13, -0.3-0.1 s, +-15%, 1,919 s, 4.27e+03, x1.49, 1e9; tiny-20m ZeRO-2 "
        "SmolLM2-135M fp32 avx512_bf16 GSM8K r16, 2026-11-30 02:23:25, commit 908036d+dirty, torch 2.13.0+cpu, "
        "issue 14, items 1, 3 and 5, #24, `--set reps=3`, <!-- 99 -->\n1. first\n```\n77\n```\n")]
    assert got == ["1.159", "45.8", "0.91", "1.13", "-0.3", "0.1", "15", "1,919", "4.27e+03", "1.49", "1e9"]
    pool = sorted({1.1593 * s for s in SCALES} | {0.4576 * s for s in SCALES})
    assert unheld("1.159x and 45.8%", pool) == []
    assert unheld("1.15x, 1.1594 and 45.7%", pool) == ["line 1: 1.15", "line 1: 1.1594", "line 1: 45.7"]
    parts = sections("intro `results/a.json`\n## One\ntext\n### Two\nmore\n")
    assert [(line, _CITED.findall(t)) for line, t in parts] == [(1, ["a.json"]), (2, []), (4, [])]


def test_every_hand_written_number_is_held_by_a_results_file_its_section_names():
    """Each section (heading to heading) may cite the results files it names, and only those: a number
    from a run the reader is not pointed to, or from no run, fails."""
    hand, _, _ = _parts()
    bad, missing = [], []
    for first, text in sections(hand):
        missing += [f"line {first}: {n}" for n in sorted(set(_CITED.findall(text))) if not (RESULTS / n).is_file()]
        bad += unheld(text, held_values(_section_files(text), strings=False), first)
    assert not missing, "docs/benchmarks.md names results files that do not exist:\n" + "\n".join(missing)
    assert not bad, (f"{len(bad)} numbers in docs/benchmarks.md that no results file named in their section "
                     "holds:\n" + "\n".join(bad))


def test_every_generated_number_is_held_and_the_block_is_regenerated():
    """The generated block is what benchmarks/report.py renders from summary.json, and each of its numbers
    is held there (summary.json carries every figure shown and the rows' labels and goals)."""
    from benchmarks.report import markdown

    _, block, first = _parts()
    summary = RESULTS / "summary.json"
    bad = unheld(block, held_values([summary], True, BLOCK_SCALES), first)
    assert not bad, f"{len(bad)} numbers in the generated block that summary.json does not hold:\n" + "\n".join(bad)
    assert block == markdown(json.loads(summary.read_text())), \
        "docs/benchmarks.md's generated block differs from what summary.json renders (python -m benchmarks.report)"


# Sentences of the document as it was before issue 24, each under the results files its section named:
# figures of runs that no results file holds (another run, another CPU, never recorded).
STALE = [
    ("results/mfu.json", "bf16 (no AVX-512 BF16 or AMX here: a bf16 matmul runs at about 1.2 GFLOP/s against "
                         "78-83 GFLOP/s in fp32)"),
    ("results/zero_memory.json", "bf16 runs about 60x slower than fp32 on this CPU"),
    ("results/preprocessing.json", "at the margin one Ray actor costs 4.382 ms per MAG and two cost 2.541 ms "
                                   "(1.72x), against 4.266 ms in one process"),
    ("results/peers.json", "measured 1.870 (2026-11-30 00:20, 4765b94)"),
    ("results/padding.json", "Padded fraction of the LM's positions with length grouping: 16.9% -> 9.8% on the "
                             "synthetic rows"),
]


def test_the_stale_figures_of_issue_24_fail():
    """The rule rejects what issue 24 found stale, each against the file its section named."""
    for cited, sentence in STALE:
        bad = unheld(sentence, held_values(_section_files(cited), strings=False))
        assert bad, sentence
    assert unheld(STALE[0][1], held_values(_section_files("results/mfu.json"), False)) == [
        "line 1: 1.2", "line 1: 78", "line 1: 83"]


def test_most_digit_swaps_are_caught():
    """Swap the last two digits of each figure of three or more digits in the hand-written sections (a
    typo, or a figure copied from elsewhere): the rule reports most of them. The rest land on another
    value of their section's files; that share is what the rule cannot see, and it must stay small."""
    hand, _, _ = _parts()
    caught = total = 0
    for _first, text in sections(hand):
        pool = held_values(_section_files(text), strings=False)
        for _, shown, _value, half in numbers(text):
            digits = [i for i, ch in enumerate(shown) if ch.isdigit()]
            if len(digits) < 3 or "e" in shown.lower() or shown[digits[-2]] == shown[digits[-1]]:
                continue
            i, j = digits[-2], digits[-1]
            swapped = float((shown[:i] + shown[j] + shown[i + 1:j] + shown[i] + shown[j + 1:]).replace(",", ""))
            total += 1
            caught += not _held(swapped, half, pool)
    assert total >= 50, total
    assert caught >= 0.6 * total, f"only {caught} of {total} digit swaps caught"


def test_the_headlines_show_what_a_total_hides():
    """The sft/TRL row carries its per-step paired median and the A/A control's per-step range (from the
    samples: each step's ratio, back to back) and says whether the median is outside that range; the
    MAGDi/SFT row what it leaves out; the checkpoint rows save and restore, each time ratio over bytes."""
    import copy
    import statistics

    from benchmarks import checkpoint, peers

    fig = json.loads((RESULTS / "peers.json").read_text())
    v = fig["details"]["variants"]

    def per_step(num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(v[num]["samples_cpu_s"], v[den]["samples_cpu_s"], strict=True)]

    sft_peer, aa = per_step("peer", "sft"), per_step("sft_aa", "sft")
    label = {r.id: r.label for r in peers.rows(fig)}
    median = statistics.median(sft_peer)
    verdict = "inside it, not resolved" if min(aa) <= median <= max(aa) else "outside it"
    assert (f"paired median {median:.3f}, A/A control's per-step range {min(aa):.2f}-{max(aa):.2f}: "
            f"{verdict}") in label["peers_sft_vs_peer"]
    magdi = label["peers_magdi_vs_sft"]
    assert f"paired median {statistics.median(per_step('magdi', 'sft')):.3f}" in magdi
    assert "one rank" in magdi and "without the frozen-feature pass" in magdi
    slow_peer = copy.deepcopy(fig)  # TRL twice as slow on every step: resolved
    for clock in ("cpu_s", "wall_s"):
        r = slow_peer["ratios"][clock]["sft_vs_peer"]
        r.update({k: 2 * r[k] for k in ("value", "paired_median", "min", "max")})
    assert "outside it" in {r.id: r.label for r in peers.rows(slow_peer)}["peers_sft_vs_peer"]

    ck = json.loads((RESULTS / "checkpoint.json").read_text())
    small, big = ck["sizes"][0], ck["sizes"][-1]
    got = {r.id: r.value for r in checkpoint.rows(ck)}
    for kind, key in (("save", "checkpoint"), ("restore", "checkpoint_restore")):
        want_ratio = (big[f"{kind}_s"] / small[f"{kind}_s"]) / (big["bytes"] / small["bytes"])
        assert math.isclose(got[key], want_ratio, rel_tol=1e-9), (kind, got[key], want_ratio)


def test_report_check_fails_when_the_docs_or_summary_drift(tmp_path):
    """``python -m benchmarks.report --check`` on the committed files passes (summary.json and the block
    are what the results files render now); a figure edited in the block, or a stale row in summary.json,
    fails it."""
    import shutil

    from benchmarks.report import main

    results, docs = tmp_path / "results", tmp_path / "benchmarks.md"
    shutil.copytree(RESULTS, results)
    shutil.copy(DOC, docs)
    args = ["--results-dir", str(results), "--docs", str(docs), "--check"]
    assert main(args) == 0
    text = docs.read_text()
    docs.write_text(text.replace("| 1.159x |", "| 1.160x |", 1))
    assert main(args) == 1
    docs.write_text(text)
    summary = json.loads((results / "summary.json").read_text())
    summary["table"][0]["label"] += " (edited)"
    (results / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    assert main(args) == 1
