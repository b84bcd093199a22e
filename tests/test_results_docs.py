"""Results anyone can re-derive (magdi_dist/results/): the documents' generated blocks equal what their
raw files in docs/results/ give (the real CLI, in a subprocess); a number edited by hand, or a raw file
changed without regenerating, fails the check; collect copies a run folder's small raw files (and only
those) with each cell's commit read from a real MLflow store, and refuses weights and an over-budget copy.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET = "budget_magdi_vs_sft"  # a real study summary (the budget probe of configs/study_magdi_vs_sft.yaml)


def magdi(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The installed ``magdi-dist`` command (the console script beside this interpreter)."""
    script = Path(sys.executable).with_name("magdi-dist")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "magdi_dist.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def _copy_docs(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copy(ROOT / "README.md", root / "README.md")
    return root


def _with_budget_block(root: Path) -> Path:
    """docs/results.md of the copy with a block of the budget probe's real summary appended, generated."""
    doc = root / "docs" / "results.md"
    doc.write_text(doc.read_text() + f"\n## probe\n\n<!-- results:{BUDGET}:study -->\n<!-- /results -->\n")
    _regenerate(root, doc)
    return doc


def _regenerate(root: Path, doc: Path) -> None:
    """Regenerate ``doc`` only, in this process (``docs.write`` would redraw every plot too)."""
    from magdi_dist.results import docs

    (new,) = [new for path, _, new in docs.generate(root, write=False) if path == doc]
    doc.write_text(new)


def collect_cli(*args: str):
    """``magdi-dist results collect ...`` in this process (the fixture's MLflow is imported already)."""
    from typer.testing import CliRunner

    from magdi_dist.cli import app

    return CliRunner().invoke(app, ["results", "collect", *args])


def test_the_repository_passes_the_check():
    done = magdi("results", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_a_number_edited_by_hand_fails_the_check(tmp_path):
    root = _copy_docs(tmp_path)
    doc = _with_budget_block(root)
    text = doc.read_text()
    block = text[text.index(f"<!-- results:{BUDGET}:study -->"):]
    row = next(line for line in block.splitlines() if line.startswith("| 5m | magdi |"))
    loss = re.search(r"\| (0\.\d{4}) \|", row).group(1)
    edited = row.replace(loss, f"{float(loss) - 0.001:.4f}", 1)
    doc.write_text(text.replace(row, edited))
    done = magdi("results", "--check", "--root", str(root))
    assert done.returncode == 1
    assert "docs/results.md (as committed)" in done.stdout and f"-{edited}" in done.stdout and f"+{row}" in done.stdout
    assert "README.md" not in done.stdout  # only the edited document is named
    assert "1 document(s) differ" in done.stderr


def test_a_changed_raw_file_changes_the_regenerated_table(tmp_path):
    root = _copy_docs(tmp_path)
    doc = _with_budget_block(root)
    summary_path = root / "docs" / "results" / BUDGET / "study_summary.json"
    summary = json.loads(summary_path.read_text())
    cell = next(c for c in summary["cells"] if c["cell"] == "5m-ntp-only-s0")
    cell["eval_ntp_loss"] = 0.5
    summary_path.write_text(json.dumps(summary))
    before = doc.read_text()
    done = magdi("results", "--check", "--root", str(root))
    assert done.returncode == 1 and "docs/results.md (as committed)" in done.stdout
    _regenerate(root, doc)
    text = doc.read_text()
    block = text[text.index(f"<!-- results:{BUDGET}:study -->"):]  # the edited study's table, not another's
    row = next(line for line in block.splitlines() if line.startswith("| 5m | ntp-only |"))
    assert "| 0.5000 |" in row and row not in before


def test_the_demo_table_follows_its_evaluation_summary(tmp_path):
    root = _copy_docs(tmp_path)
    cells = root / "docs" / "results" / "demo" / "cells"
    name = sorted(p.name for p in cells.iterdir())[0]
    path = cells / name / "eval" / "summary.json"
    ev = json.loads(path.read_text())
    ev.update(accuracy=0.123, ci95_low=0.1, ci95_high=0.15)
    path.write_text(json.dumps(ev))
    done = magdi("results", "--check", "--root", str(root))
    assert done.returncode == 1 and "README.md (as committed)" in done.stdout
    assert re.search(rf"^\+\| {re.escape(name)} \|.*\| 12\.3% \[10\.0%, 15\.0%\]", done.stdout, re.M)


def test_a_fit_that_its_cells_contradict_is_refused(tmp_path):
    root = _copy_docs(tmp_path)
    metrics = sorted((root / "docs" / "results" / "demo" / "cells").glob("*/metrics.jsonl.gz"))[0]
    lines = gzip.decompress(metrics.read_bytes()).decode().splitlines()
    last = json.loads(lines[-1])
    last["eval_ntp_loss"] *= 2
    metrics.write_bytes(gzip.compress(("\n".join([*lines[:-1], json.dumps(last)]) + "\n").encode()))
    done = magdi("results", "--check", "--root", str(root))
    assert done.returncode == 2 and "scaling_fit.json" in done.stderr and "different runs" in done.stderr


# --- collect ------------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


FINISHED = [("s", "magdi", 0), ("s", "magdi", 1), ("s", "ntp-only", 0), ("s", "ntp-only", 1)]
RUNNING = ("m", "magdi", 0)
PLANNED = {"name": "probe", "sizes": [{"name": "s"}, {"name": "m"}],
           "variants": [{"name": "magdi"}, {"name": "ntp-only"}], "seeds": [0, 1]}


def _cell_files(src: Path, cell: str, loss: float, correct: list[bool]) -> None:
    """A cell's files as a study writes them (absolute paths included), and what collect must skip."""
    from magdi_dist.eval.stats import summarize

    folder = src / "cells" / cell
    (folder / "eval").mkdir(parents=True)
    (folder / "export").mkdir()
    (folder / "checkpoints" / "step-000002").mkdir(parents=True)
    steps = [{"step": i, "epoch": i / 10, "loss": 1.0 / i, "tokens": 100 * i, "step_time_s": 0.5} for i in (1, 2)]
    rows = [*steps, {"eval_loss": loss + 0.5, "eval_ntp_loss": loss, "step": 2}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = [{"id": f"q{i}", "correct": c, "answers": ["1"], "vote": "1", "generated_tokens": 8, "sample_tokens": [8],
                "latency_s": 0.01} for i, c in enumerate(correct)]
    (folder / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {**summarize(records), "model": str(folder / "export"), "out": str(folder / "eval")}
    (folder / "eval" / "summary.json").write_text(json.dumps(summary))
    (folder / "resolved_config.yaml").write_text(f"train:\n  lr: 0.01\n  output_dir: {folder}\n")
    (folder / "export" / "model.safetensors").write_bytes(b"\0" * 4096)
    (folder / "checkpoints" / "step-000002" / "mp_rank_00_model_states.pt").write_bytes(b"\0" * 4096)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A seeded study's run folder with a real embedded MLflow store: of its 8 planned cells, 4 FINISHED
    (size s, both variants, seeds 0 and 1) and 1 still RUNNING; the cells' losses and answers, by name."""
    import random

    from mlflow_server import fresh_sqlite_store

    from magdi_dist.track.runs import finish_run, log_cell_result, start_cell_run, start_study_run
    from magdi_dist.track.store import ensure_experiment

    src = tmp_path_factory.mktemp("run") / "study"
    uri = fresh_sqlite_store(src)
    parent = start_study_run(uri, ensure_experiment(uri), "probe", PLANNED, rank=0)
    rng = random.Random(0)
    runs, losses, answers = {}, {}, {}
    for size, variant, seed in [*FINISHED, RUNNING]:
        cell = f"{size}-{variant}-s{seed}"
        losses[cell], answers[cell] = rng.uniform(0.1, 0.4), [rng.random() < 0.5 for _ in range(30)]
        _cell_files(src, cell, losses[cell], answers[cell])
        tags = {"magdi.size": size, "magdi.variant": variant, "magdi.seed": seed}
        runs[cell] = start_cell_run(uri, parent, "probe", cell, {"cell": cell}, rank=0, tags=tags)
        if (size, variant, seed) in FINISHED:
            log_cell_result(uri, runs[cell], rank=0, param_count=250_000, wall_time_s=10.0 + seed)
            finish_run(uri, runs[cell], rank=0)
    (src / "demo_study.yaml").write_text(f"name: probe\noutput_dir: {src}\n")
    summary = {"study": "probe", "tracking_uri": f"sqlite:///{src}/mlflow/mlflow.db",
               "cells": [{"export_dir": str(src / "cells/s-magdi-s0/export")}]}
    (src / "study_summary.json").write_text(json.dumps(summary))
    return {"src": src, "uri": uri, "runs": runs, "losses": losses, "answers": answers}


DONE = [f"{s}-{v}-s{seed}" for s, v, seed in FINISHED]


def test_collect_copies_the_raw_files_with_their_commits(run_folder, tmp_path):
    src, root = run_folder["src"], tmp_path / "checkout"
    (root / "docs").mkdir(parents=True)
    extra = tmp_path / "stdout.txt"
    extra.write_text(f"demo wall time: 12 s\nscaling plot: {src}/scaling_curve.png\n")
    done = collect_cli(str(src), "--name", "probe", "--extra", str(extra), "--root", str(root))
    assert done.exit_code == 0, done.output
    assert "not collected: m-magdi-s0 (its latest run is RUNNING)" in done.output
    dest = root / "docs" / "results" / "probe"
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    per_cell = ["eval/predictions.jsonl.gz", "eval/summary.json", "metrics.jsonl.gz", "mlflow.json",
                "resolved_config.yaml"]
    assert got == sorted(["demo_study.yaml", "extra/stdout.txt", "provenance.json", "study_config.json",
                          "study_summary.json", *[f"cells/{c}/{f}" for c in DONE for f in per_cell]])
    for path in dest.rglob("*"):  # no absolute path of the run folder is left, in any file
        if path.is_file():
            data = path.read_bytes()
            assert str(src).encode() not in (gzip.decompress(data) if path.suffix == ".gz" else data), path
    summary = json.loads((dest / "cells/s-magdi-s0/eval/summary.json").read_text())
    assert summary["model"] == "cells/s-magdi-s0/export" and summary["out"] == "cells/s-magdi-s0/eval"
    assert "sqlite:///mlflow/mlflow.db" in (dest / "study_summary.json").read_text()
    original = (src / "cells/s-ntp-only-s1/metrics.jsonl").read_bytes()
    assert gzip.decompress((dest / "cells/s-ntp-only-s1/metrics.jsonl.gz").read_bytes()) == original
    assert json.loads((dest / "study_config.json").read_text()) == PLANNED  # as the parent run logged it
    provenance = json.loads((dest / "provenance.json").read_text())
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    assert sorted(provenance["cells"]) == sorted(DONE)
    for cell, p in provenance["cells"].items():
        assert (p["commit"], p["dirty"], p["run_id"]) == (_git("rev-parse", "HEAD"), dirty, run_folder["runs"][cell])
        assert p["machine"]["cores"] >= 1 and p["collected_at"]


def test_a_partial_study_is_shown_as_partial(run_folder, tmp_path):
    import statistics

    from magdi_dist.results.collect import collect
    from magdi_dist.results.raw import opened
    from magdi_dist.results.seeds import study

    collect(run_folder["src"], "probe", tmp_path)
    with opened(tmp_path / "docs" / "results" / "probe") as c:
        text = study(c)
    assert "**4 of 8 cells** of study `probe` collected; not yet: m-magdi-s0, m-magdi-s1, m-ntp-only-s0, " \
           "m-ntp-only-s1." in text
    for variant in ("magdi", "ntp-only"):
        cells = [f"s-{variant}-s{seed}" for seed in (0, 1)]
        loss = [run_folder["losses"][c] for c in cells]
        acc = [100 * statistics.fmean(run_folder["answers"][c]) for c in cells]
        row = next(line for line in text.splitlines() if line.startswith(f"| s | {variant} | 0, 1 |"))
        assert f"| {statistics.fmean(loss):.4f} ± {statistics.stdev(loss):.4f} |" in row
        assert f"| {statistics.fmean(acc):.1f} ± {statistics.stdev(acc):.1f} |" in row
    assert "| s | 250,000 | 2 | 30 |" in text  # the paired row: size s, both seeds, the 30 questions
    assert "| m |" not in text  # no finished cell of size m: nothing to show or compare


def test_collect_again_adds_the_cells_that_finished_or_replaces_all(run_folder, tmp_path):
    from magdi_dist.results.collect import collect
    from magdi_dist.track.runs import finish_run

    src, root = run_folder["src"], tmp_path / "checkout"
    first = collect(src, "probe", root)
    finish_run(run_folder["uri"], run_folder["runs"]["m-magdi-s0"], rank=0)
    try:
        again = collect(src, "probe", root)
    finally:  # the module's other tests see the cell running again
        from magdi_dist.track.store import client_for

        client_for(run_folder["uri"]).update_run(run_folder["runs"]["m-magdi-s0"], status="RUNNING")
    assert (first["added"], again["added"], again["updated"]) == (DONE, ["m-magdi-s0"], DONE)
    provenance = json.loads((root / "docs/results/probe/provenance.json").read_text())
    assert sorted(provenance["cells"]) == sorted([*DONE, "m-magdi-s0"])
    collect(src, "probe", root, replace=True)  # m-magdi-s0 runs again: a fresh collection leaves it out
    assert not (root / "docs/results/probe/cells/m-magdi-s0").exists()
    assert sorted(json.loads((root / "docs/results/probe/provenance.json").read_text())["cells"]) == sorted(DONE)


@pytest.mark.parametrize("extra", ["cells/s-magdi-s0/export/model.safetensors",
                                   "cells/s-magdi-s0/checkpoints/step-000002/mp_rank_00_model_states.pt"])
def test_collect_refuses_weights_and_writes_nothing(run_folder, tmp_path, extra):
    root = tmp_path / "checkout"
    (root / "docs").mkdir(parents=True)
    done = magdi("results", "collect", str(run_folder["src"]), "--name", "probe", "--extra",
                 str(run_folder["src"] / extra), "--root", str(root))
    assert done.returncode == 2 and "refused" in done.stderr and Path(extra).name in done.stderr
    assert not (root / "docs" / "results").exists()


def test_collect_refuses_a_copy_over_its_budget(run_folder, tmp_path):
    root = tmp_path / "checkout"
    (root / "docs").mkdir(parents=True)
    done = collect_cli(str(run_folder["src"]), "--name", "probe", "--max-mb", "0.001", "--root", str(root))
    assert done.exit_code == 2 and "over the budget" in done.output and "nothing was written" in done.output
    assert not (root / "docs" / "results").exists()


def test_an_ablation_block_counts_what_each_cell_answered(run_folder, tmp_path):
    """The ablation table and its paired comparisons, from the collected cells, against counts made here
    from the answers the fixture wrote (not through the report's own helpers)."""
    from magdi_dist.results import docs
    from magdi_dist.results.collect import collect

    collect(run_folder["src"], "probe", tmp_path)
    doc = tmp_path / "docs" / "ablation.md"
    doc.write_text("# probe\n\n<!-- results:probe:ablation -->\n<!-- /results -->\n\n"
                   "<!-- results:probe:bars -->\n<!-- /results -->\n")
    assert docs.write(tmp_path) == [doc]
    text = doc.read_text()
    assert (tmp_path / "docs" / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![held-out NTP loss and accuracy per variant, probe](probe.png)" in text
    answers = run_folder["answers"]
    for cell in DONE:  # seeds share a variant: rows are named by cell
        row = next(line for line in text.splitlines() if line.startswith(f"| {cell} | 2 |"))
        assert f"| {run_folder['losses'][cell]:.4f} | {sum(answers[cell]) / 30:.1%} [" in row
        assert "| 0.5 | - | 300 |" in row  # median step 0.5 s; no positive count logged; 300 tokens in 1 s
    for i, a in enumerate(DONE):
        for b in DONE[i + 1:]:
            only_b = sum(y and not x for x, y in zip(answers[a], answers[b], strict=True))
            only_a = sum(x and not y for x, y in zip(answers[a], answers[b], strict=True))
            n, k = only_a + only_b, min(only_a, only_b)
            mcnemar = min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n) if n else 1.0
            diff = (sum(answers[b]) - sum(answers[a])) / 30
            row = next(line for line in text.splitlines() if line.startswith(f"| {b} vs {a} |"))
            assert row.startswith(f"| {b} vs {a} | {diff:+.1%} [") and row.endswith(
                f"| {only_b} | {only_a} | {mcnemar:.3f} |"), row
    assert docs.check(tmp_path) == []
    assert "commit (MLflow run tags, `provenance.json`)" in text
    assert "**4 of 8 cells** of study `probe` collected; not yet: m-magdi-s0," in text  # a partial study says so


@pytest.mark.parametrize("name", ["smollm2_ablation", "demo"])
def test_the_setup_block_states_the_data_and_steps_the_cells_were_given(name):
    """Against the collected cells' resolved configs, read here with yaml: the data is the files a
    config names (its synthetic defaults only when it names none), and a cell trained for fewer steps
    than the others (the untrained baseline) is named, not taken for all."""
    import yaml

    from magdi_dist.results.raw import opened
    from magdi_dist.results.tables import setup

    folder = ROOT / "docs" / "results" / name
    configs = {p.parent.name: yaml.safe_load(p.read_text()) for p in folder.glob("cells/*/resolved_config.yaml")}
    with opened(folder) as c:
        text = setup(c)
    data = next(iter(configs.values()))["data"]
    if data["paths"]:
        assert "synthetic" not in text and all(p in text for p in data["paths"])
    else:
        assert f"{data['synthetic']['n']:,} synthetic" in text
    steps = {cell: cfg["train"]["max_steps"] for cell, cfg in configs.items()}
    stated = re.search(r"\*\*Training\.\*\* ([\d,]+) steps(?: \(([^)]*)\))? of", text)
    assert stated and int(stated[1].replace(",", "")) == max(steps.values()), text
    named = dict(part.split(": ") for part in stated[2].split("; ")) if stated[2] else {}
    shorter = {cell: n for cell, n in steps.items() if n != max(steps.values())}
    assert len(named) == len(shorter)  # every shorter cell is named by its variant, with its steps
    for variant, n in named.items():
        assert [shorter[cell] for cell in shorter if cell.endswith(f"-{variant}")] == [int(n.replace(",", ""))]
