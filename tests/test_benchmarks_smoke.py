"""The benchmark suite as one protocol (benchmarks/figure.py): ``python -m benchmarks --quick`` runs every
figure end to end at a tiny size (tiny-1m, one repetition, 2-rank ZeRO run, the preprocessing benchmark at
60 and 120 MAGs) and writes valid JSON for each plus the docs table; every figure and experiment renders
its committed results file through the same ``rows``/``details``; a missing optional extra stops a run
with the install command; results land in the checkout the user stands in. The peer figure (skipped by
``--quick`` unless named) has its own test in tests/test_bench_peers.py. No timing is asserted: quick-mode
numbers are noise. Output goes to tmp_path, never to the real benchmarks/results or docs/benchmarks.md."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from benchmarks.figure import EXPERIMENTS, FIGURES, Row, load  # noqa: E402

QUICK = tuple(n for n in FIGURES if n != "peers")  # what --quick runs unless told otherwise


@pytest.mark.slow
def test_quick_run_writes_every_figure(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "benchmarks.md"
    results.mkdir()
    shutil.copy(RESULTS / "before.json", results)  # the committed baseline: where "before" comes from
    docs.write_text("# Benchmarks\n\nHand-written intro.\n\n## Preprocessing\n\nhand-written section\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--results-dir", str(results), "--docs", str(docs),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]

    summary = json.loads((results / "summary.json").read_text())
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["torch_threads"] == 1
    for name in QUICK:
        fig = json.loads((results / f"{name}.json").read_text())
        assert fig["figure"] == name
        assert "error" not in fig, fig.get("error")
    assert {r["figure"] for r in summary["table"]} == set(QUICK)
    for row in summary["table"]:  # summary.json is the source of truth: every entry says when and where
        assert row["date"] and row["commit"] and "met" in row and "goal" in row, row
        assert isinstance(row["value"], int | float), row
    rows = {r["id"]: r for r in summary["table"]}
    # quick mode times tiny-1m only; its "before" is the committed baseline's, found by row id, where the
    # baseline ran on this CPU, else left out and said so (test_baseline_before_only_from_the_same_cpu)
    assert {"step_overhead_tiny-1m", "step_overhead_sft_tiny-1m"} <= set(rows)
    assert not any(i.startswith("step_overhead") and "20m" in i for i in rows)
    base = json.loads((RESULTS / "before.json").read_text())["machine"]
    here = summary["machine"]
    if (base["cpu_model"], base["isa"]) == (here["cpu_model"], here["isa"]):
        assert rows["step_overhead_tiny-1m"]["before_source"] == "results/before.json"
        # before.json (an older layout: medians, no "value"): tiny-1m, worst of frozen 1.156 and live 1.095
        assert rows["step_overhead_tiny-1m"]["before"] == pytest.approx(1.1563440501349636)
        assert rows["mfu"]["before"] == pytest.approx(0.5629004811405138)
    else:
        assert rows["step_overhead_tiny-1m"]["before"] is None and rows["mfu"]["before"] is None
        assert rows["step_overhead_tiny-1m"]["before_machine"]["isa"] == base["isa"]
    assert rows["padding"]["before_source"] == "same run"
    assert not (results / "peers.json").exists()  # --quick runs the peer figure only when named
    zero = json.loads((results / "zero_memory.json").read_text())
    assert [s["stage"] for s in zero["stages"]] == [0, 1, 2, 3]
    assert zero["stages"][3]["per_rank_bytes"][0]["params"] < zero["stages"][0]["per_rank_bytes"][0]["params"]
    pre = json.loads((results / "preprocessing.json").read_text())  # one file: the figure and its raw runs
    assert pre["pipeline"]["sizes"] == [60, 120] and pre["pipeline"]["runs"] and "real" not in pre

    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written intro.\n\n## Preprocessing\n\nhand-written section\n")
    assert text.count("<!-- bench:begin") == 1 and text.count("<!-- bench:end -->") == 1
    assert "| figure | before | value | goal | met | measured |" in text
    for marker in ("- Padding ", "- Step overhead tiny-1m", "- MFU ", "- Data path", "- Checkpoint", "- ZeRO memory",
                   "Preprocessing (`benchmarks/preprocessing.py`"):
        assert marker in text, marker
    assert "predates the current format" not in text


def _declared_name(path: Path) -> str | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NAME" for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def test_every_benchmark_module_is_registered_under_its_own_name():
    """A module declaring NAME is a figure: its file is named after it and the registry lists it (a
    figure nobody can run by name, or a name map, is what this room had before)."""
    declared = {p: _declared_name(p) for p in (ROOT / "benchmarks").rglob("*.py")}
    figures = {p.stem: p.parent.name for p, n in declared.items() if n is not None}
    assert all(n == p.stem for p, n in declared.items() if n is not None), declared
    assert {n for n, d in figures.items() if d == "benchmarks"} == set(FIGURES)
    assert {n for n, d in figures.items() if d == "experiments"} == set(EXPERIMENTS)


@pytest.mark.parametrize("name", FIGURES + EXPERIMENTS)
def test_committed_results_render_through_the_protocol(name):
    """Every figure reads its committed results file (the numbers in docs/benchmarks.md) with its own
    rows and details: a change to a figure that breaks reading its recorded results fails here."""
    mod = load(name)
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"no committed results/{name}.json")
    result = json.loads(path.read_text())
    rows = mod.rows(result)
    assert rows and all(isinstance(r, Row) and r.id and r.label for r in rows)
    assert all(isinstance(r.value, int | float) for r in rows), [(r.id, r.value) for r in rows]
    assert len({r.id for r in rows}) == len(rows)
    text = mod.details(result)
    assert isinstance(text, str) and text.strip()


def test_committed_summary_renders_the_docs_table():
    """The generated block of docs/benchmarks.md from the committed summary.json, through the generic
    report: the same table rows as in the committed docs, every figure's details readable."""
    from benchmarks.report import markdown

    summary = json.loads((RESULTS / "summary.json").read_text())
    lines = markdown(summary).splitlines()
    start = lines.index("| figure | before | value | goal | met | measured |") + 2
    table = lines[start:lines.index("", start)]
    assert len(table) == len(summary["table"])
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    assert all(line in docs for line in table)
    assert "predates the current format" not in "\n".join(lines)


def test_baseline_before_only_from_the_same_cpu():
    """A row's "before" from results/before.json (found by row id) where the baseline ran on the figure's
    CPU; on another CPU (other flags) none, the row saying why and naming the baseline's machine in
    the docs. The committed files: the checkpoint figure, before.json's own machine and another one."""
    from benchmarks.report import OTHER_CPU, figure_rows, markdown

    baseline = json.loads((RESULTS / "before.json").read_text())
    fig = json.loads((RESULTS / "checkpoint.json").read_text())
    same = {r["id"]: r for r in figure_rows("checkpoint", fig, baseline, baseline["machine"])}
    want = baseline["figures"]["checkpoint"]["value"]  # the baseline's own save ratio
    assert same["checkpoint"]["before"] == pytest.approx(want) and same["checkpoint"]["before_source"] == \
        "results/before.json"
    assert same["checkpoint_restore"]["before"] is not None
    other = {**baseline["machine"], "isa": [*baseline["machine"]["isa"], "avx512f"]}
    rows = figure_rows("checkpoint", fig, baseline, other)
    assert [(r["before"], r["before_source"]) for r in rows] == [(None, OTHER_CPU)] * 2
    summary = {**json.loads((RESULTS / "summary.json").read_text()), "table": [
        {**r, "date": "2026-01-01 00:00:00 UTC", "commit": "abc1234+dirty"} for r in rows]}
    text = markdown(summary)
    assert "n/a (baseline run on another CPU)" in text and "abc1234 + uncommitted changes" in text
    assert f"taken {baseline['machine']['date'][:16]} at commit {baseline['machine']['git_commit']}" in text


def test_missing_extra_stops_the_run_with_the_install_command():
    """``--only peers`` without the bench extra: the extra and its install command, exit 2, nothing run.
    This environment has the extra, so the run starts Python without site-packages (-S): TRL is then
    really absent (checked first), and so is torch, which the check must not need."""
    no_site = [sys.executable, "-S"]
    assert subprocess.run([*no_site, "-c", "import trl"], capture_output=True).returncode != 0
    proc = subprocess.run([*no_site, "-m", "benchmarks", "--only", "peers", "--results-dir", "unused"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "peers needs the `bench` extra (missing: trl, datasets): pip install -e '.[bench]'" in out
    assert "Traceback" not in out and "all done" not in out
    assert not (ROOT / "unused").exists()


@pytest.mark.slow
def test_bench_writes_into_the_checkout_you_stand_in(tmp_path):
    """``magdi-dist bench`` (this environment's installed command, whose package is this checkout) run in
    another clone: that clone's code runs and its results file is written there, not here."""
    clone = tmp_path / "clone"
    ignore = shutil.ignore_patterns("__pycache__", "results")
    for part in ("benchmarks", "magdi_dist"):
        shutil.copytree(ROOT / part, clone / part, ignore=ignore)
    (clone / "docs").mkdir()
    ours = RESULTS / "padding.json"
    before = ours.stat().st_mtime_ns
    command = Path(sys.executable).with_name("magdi-dist")
    env = {**os.environ, "MAGDI_BENCH_WORKDIR": str(tmp_path / "work")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(command), "bench", "--only", "padding", "--no-docs"], cwd=clone / "docs", env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fig = json.loads((clone / "benchmarks" / "results" / "padding.json").read_text())
    assert fig["figure"] == "padding" and "gsm8k_debate" not in fig["sets"]  # the clone has no ../shared data
    assert (clone / "benchmarks" / "results" / "summary.json").is_file()
    assert ours.stat().st_mtime_ns == before
