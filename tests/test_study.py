"""Scaling studies end to end: the demo's CI variant (two tiny students, Ray + DeepSpeed ZeRO-2 on 2
CPU ranks) against a real sqlite MLflow store through the CLI, and the same study against a real
``mlflow server`` on 127.0.0.1; plus the study config's refusals, which happen before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow_server import mlflow_globals_restored, running_mlflow_server
from study_setup import study_file

from magdi_dist.config import ConfigError
from magdi_dist.study.config import load_study

ROOT = Path(__file__).resolve().parents[1]
QUICK_CELLS = ["1m-magdi-lr0.003", "1m-magdi-lr0.01", "5m-magdi"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sizez": []}, "sizez"),
        ({"sizes": []}, "sizes"),
        ({"sizes": [{"name": "a", "overrides": {"model.base": "tiny-1m"}}] * 2}, "duplicate"),
        ({"champion_metric": "eval_loss", "champion_mode": "max"}, "champion_mode: min"),
        ({"sizes": [{"name": "a", "overrides": {"train.lr": -1}}]}, "train.lr"),
        ({"sizes": [{"name": "a", "overrides": {"train.nonsense": 1}}]}, "nonsense"),
        ({"base_config": "missing.yaml"}, "base_config"),
        ({"lr_grid": [1e-3, -1e-3]}, "lr_grid"),
        ({"lr_grid": [1e-3, 1e-3]}, "lr_grid"),
        ({"variants": [{"name": "v", "lr_grid": [1e-3]}]}, "not to variants"),
    ],
)
def test_bad_study_configs_fail_before_anything_runs(tmp_path, changes, message):
    path = study_file(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message):
        load_study(path)
    assert not (tmp_path / "study" / "cells").exists()


def test_cells_share_data_and_differ_only_by_their_axes(tmp_path):
    study = load_study(study_file(tmp_path, variants=[{"name": "magdi"}, {"name": "ntp", "overrides": {
        "model.margin_weight": 0.0, "model.node_weight": 0.0}}]))
    configs = {cell.name: study.cell_config(cell) for cell in study.cells()}
    assert sorted(configs) == ["1m-magdi-lr0.003", "1m-magdi-lr0.01", "1m-ntp-lr0.003", "1m-ntp-lr0.01",
                               "5m-magdi", "5m-ntp"]  # the quick demo sweeps the 1m size's lr
    assert configs["1m-ntp-lr0.01"].model.node_weight == 0.0 and configs["1m-magdi-lr0.01"].model.node_weight == 1.0
    assert configs["1m-ntp-lr0.01"].train.lr == 1e-2 and configs["5m-ntp"].train.lr == 1e-3  # its swept lr
    assert configs["5m-magdi"].model.base == "tiny-5m"
    assert len({c.data.model_dump_json() for c in configs.values()}) == 1
    assert len({c.train.output_dir for c in configs.values()}) == 6
    # One feature model and one shard folder for every size: the data is prepared once.
    assert {c.model.feature_model for c in configs.values()} == {"tiny-1m"}
    assert len({c.preprocess.out_dir for c in configs.values()}) == 1


def test_lr_sweep_cells_and_the_curve_takes_each_sizes_best(tmp_path):
    from magdi_dist.recipes.study import CellResult, mark_best_lr

    study = load_study(study_file(tmp_path, lr_grid=[1e-3, 3e-3], sizes=[
        {"name": "1m", "overrides": {"model.base": "tiny-1m"}},
        {"name": "5m", "overrides": {"model.base": "tiny-5m"}, "lr_grid": [5e-4]}]))
    cells = study.cells()
    assert [c.name for c in cells] == ["1m-magdi-lr0.001", "1m-magdi-lr0.003", "5m-magdi-lr0.0005"]
    assert [study.cell_config(c).train.lr for c in cells] == [1e-3, 3e-3, 5e-4]
    results = [CellResult(c.name, c.size.name, c.variant.name, "finished", lr=c.lr, eval_ntp_loss=loss)
               for c, loss in zip(cells, [1.2, 0.9, 0.8], strict=True)]
    results.append(CellResult("1m-magdi-lr0.01", "1m", "magdi", "failed", lr=1e-2))
    mark_best_lr(results)
    assert [r.best_lr for r in results] == [False, True, True, False]


def _check_study(summary: dict, expect_cells: list[str], tracking_uri: str, status: str) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    assert summary["status"] == "FINISHED"
    assert [c["cell"] for c in summary["cells"]] == expect_cells
    assert {c["status"] for c in summary["cells"]} == {status}
    cells = summary["cells"]
    swept = any("-lr" in c for c in expect_cells)
    if swept:  # the quick demo: two sizes, the 1m one swept over two learning rates
        assert cells[0]["params"] < cells[-1]["params"]
        # One child run per learning rate, the better one on the curve.
        assert sum(c["best_lr"] for c in cells if c["size"] == "1m") == 1 and cells[-1]["best_lr"]
    for c in cells:
        assert 0.0 <= c["accuracy"] <= 1.0 and c["eval_ntp_loss"] > 0 and c["flops"] > 0
    client = MlflowClient(tracking_uri)
    parent = client.get_run(summary["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["magdi.cell"] for r in children) == expect_cells  # one run per cell, not per rank
    for run in children:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert len(history) >= 2, "rank 0 logs per-step metrics from inside the Ray Train worker"
        assert run.data.metrics["param_count"] > 0 and "eval_accuracy" in run.data.metrics
        assert run.data.tags["magdi.data_hash"] and run.data.tags["magdi.checkpoint"]
        assert ("magdi.sweep" in run.data.tags) == (swept and run.data.tags["magdi.cell"].startswith("1m"))
        assert "eval_ntp_loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"scaling_curve.png", "scaling_fit.json"} <= artifacts
    fit = client.download_artifacts(parent.info.run_id, "scaling_fit.json")
    assert json.loads(Path(fit).read_text())["metric"] == "eval_ntp_loss"
    mlflow.set_tracking_uri(tracking_uri)
    answer = mlflow.pyfunc.load_model(summary["champion"]["uri"]).predict(["Ava has 3 pens. Ava gets 4 more. "
                                                                          "How many pens does Ava have now?"])
    assert isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str)


@pytest.mark.slow
def test_demo_quick_through_the_cli_then_rerun_skips(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "magdi_dist.cli", "demo", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "champion models:/magdi-demo-student@champion" in proc.stdout
    assert "mlflow ui --backend-store-uri sqlite:" in proc.stdout
    # Quiet by default (study/terminal.py): the phases, their progress and the results fit a screen
    # (hundreds of lines before); what was cut is in the log file the first line names.
    printed = proc.stdout + proc.stderr
    assert len(printed.splitlines()) <= 60, printed
    log_file = out / "demo.log"
    assert str(log_file) in proc.stderr.splitlines()[0]  # named first (progress on stderr, results on stdout)
    logged = log_file.read_text()
    for cut in ("Started a local Ray instance", "(RayTrainWorker pid=", "[launch] rank 0/2", "# resolved config",
                "Created version '3' of model 'magdi-demo-student'"):
        assert cut in logged and cut not in printed, cut
    for i, cell in enumerate(QUICK_CELLS, 1):  # one line per finished phase, cell i of n
        assert f"[{i}/3] {cell}  train    6/6 steps: loss " in proc.stderr
        assert f"[{i}/3] {cell}  evaluate 8 questions, accuracy " in proc.stderr
    assert "preprocess: processed 1 new input(s)" in proc.stderr
    assert "CloudPickle" not in logged  # the student is logged from code (track/student_code.py)
    # Ray Train's placement-group cleaner needs the State API (the dashboard): without it, it warned
    # on every check (50 lines in this run, 426 in the full demo) -- preprocess/session.py
    assert "Failed to query Ray Train Controller" not in printed + logged
    summary = json.loads((out / "study_summary.json").read_text())
    assert Path(summary["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with mlflow_globals_restored():
        _check_study(summary, QUICK_CELLS, summary["tracking_uri"], "finished")

    again = subprocess.run([sys.executable, "-m", "magdi_dist.cli", "study", "--config",
                            str(out / "demo_study.yaml"), "--json", "--verbose"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    # --verbose: Ray's own logs on the terminal again, and no log file.
    assert "Started a local Ray instance" in again.stdout + again.stderr and not (out / "study.log").exists()
    assert "[1/3] 1m-magdi-lr0.003  skipped" in again.stderr
    assert [c["status"] for c in rerun["cells"]] == ["skipped"] * len(QUICK_CELLS)
    assert rerun["parent_run_id"] == summary["parent_run_id"]

    # The ablation report reads the same files whether the cells ran or were skipped.
    from magdi_dist.study.ablation import ablation_rows, comparisons, markdown

    rows, again_rows = ablation_rows(summary), ablation_rows(rerun)
    assert [r["correct"] for r in rows] == [r["correct"] for r in again_rows] and len(rows) == len(QUICK_CELLS)
    for row, cell in zip(rows, summary["cells"], strict=True):
        assert row["accuracy"] == pytest.approx(cell["accuracy"]) == pytest.approx(sum(row["correct"]) / row["n"])
    assert markdown(rows).count("\n") == len(rows) + 1 and comparisons(rows).count(" vs ") == 1 + 3  # header + pairs


@pytest.mark.slow
def test_study_against_an_mlflow_server(tmp_path):
    """One cell is enough here: what this adds to the quick demo's test above (the sweep, the sizes, the
    re-run) is the server: the cell's run, its steps logged from inside the Ray Train worker, the
    study's artifacts and the champion's model, all through ``mlflow server`` over HTTP. The cell
    trains under ZeRO-3, so the student is built under ``zero.Init`` inside Ray Train's process group
    (which Ray sets up before the loop: train/dist.py), as the real-student configs train."""
    from magdi_dist.recipes.study import run_study

    one_cell = [{"name": "1m", "overrides": {"model.base": "tiny-1m", "train.lr": 3.0e-3,
                                             "train.deepspeed": "zero3"}}]
    with running_mlflow_server(tmp_path / "server") as url, mlflow_globals_restored():
        study = load_study(study_file(tmp_path, tracking_uri=url, name="server-study", sizes=one_cell))
        summary = run_study(study)
        _check_study(summary, ["1m-magdi"], url, "finished")
    resolved = yaml.safe_load((Path(summary["cells"][0]["export_dir"]).parent / "resolved_config.yaml").read_text())
    assert resolved["train"]["deepspeed"] == "zero3"
