"""A tracking server down for longer than MLflow's retry budget in the middle of a study (issue 25,
item 3), with real processes: a real ``mlflow server`` (sqlite store, local artifact root) is SIGKILLed
by its process group while the cell trains, stays down until the study has ended, and is restarted
on the same port and store; then the same study command runs again.

What must hold: training finishes and the outage run still writes ``study_summary.json`` (the cell's
result from its files, the tracking failure named, exit 1); the re-run trains nothing, adopts the
cell's and the study's runs (no second run, none left RUNNING), replays into the cell's run exactly
the points MLflow missed (every step of ``metrics.jsonl``, none twice) and registers its student once.

MLflow's retry budget (about 4 minutes per request by default) is shrunk through its own environment
variables (``mlflow.environment_variables``), which the study's Ray workers inherit, to about 2 s:
two retries, 0 s then 2 s apart. The outage is the study's remaining run time, far past that budget.
With ``MAGDI_OUTAGE_RESULTS=<folder>`` the measurements and both summaries are written there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow_server import MLFLOW_ENV_KEYS, _wait_healthy, free_port, mlflow_globals_restored, sqlite_template

from magdi_dist.study.demo import DEMO_SIZES, write_demo_study

ROOT = Path(__file__).resolve().parents[1]
RETRY_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
CELL = "0.25m-magdi"


class Server:
    """``mlflow server`` on one port and one store, started again after a kill (tests/mlflow_server.py
    starts each server on a fresh port and database)."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.db, self.port, self.log = root / "db.sqlite", free_port(), root / "server.log"
        shutil.copyfile(sqlite_template(), self.db)
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                    "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination", str(root / "art"),
                    "--workers", "1"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with open(self.log, "ab") as log:  # its own process group: killing it cannot hit the test
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        _wait_healthy(self.url, self.proc, self.log, 180)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def points(self, key: str) -> int:
        """Points of ``key`` the store holds, read from its database file (the server may be down)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as con:
            return con.execute("select count(*) from metrics where key = ?", (key,)).fetchone()[0]


def _study_file(tmp_path: Path, url: str) -> Path:
    """The quick demo's study, cut to one cell of the smallest size, on 1 worker, with enough steps that
    the kill lands in the middle of training."""
    path = write_demo_study(tmp_path / "study", quick=True)
    tree = yaml.safe_load(path.read_text())
    name, base, lr = DEMO_SIZES[0]
    tree.update(name="outage", tracking_uri=url, num_workers=1,
                sizes=[{"name": name, "overrides": {"model.base": base, "train.lr": lr}}])
    tree["overrides"].update({"train.max_steps": 40, "train.eval_every": 20, "train.save_every": 20})
    path.write_text(yaml.safe_dump(tree))
    return path


def _study(path: Path) -> tuple[list[str], dict[str, str]]:
    """The study command and its environment: MLflow's shrunk retry budget, no inherited tracking URI."""
    env = {**{k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}, **RETRY_BUDGET}
    return [sys.executable, "-m", "magdi_dist.cli", "study", "--config", str(path), "--json"], env


@pytest.mark.slow
def test_the_step_logger_holds_points_while_the_server_is_down_and_sends_them_once(tmp_path, monkeypatch):
    """Training's half, in one process: the points of a failed batch are held, not dropped, and sent
    once the server answers; a resumed run's steps that reached MLflow are not sent again."""
    from mlflow.tracking import MlflowClient

    from magdi_dist.track import MetricsLogger

    for key, value in {**RETRY_BUDGET, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}.items():
        monkeypatch.setenv(key, value)
    server = Server(tmp_path / "server")
    offline = MlflowClient(f"sqlite:///{server.db}")  # the run exists before any server does
    run_id = offline.create_run(offline.create_experiment("held")).info.run_id
    steps = [{"step": s, "loss": 1.0 / s} for s in range(1, 31)]
    with mlflow_globals_restored():
        logger = MetricsLogger(server.url, run_id, rank=0, flush_every=4, retry_after_s=1.0)
        for rec in steps[:10]:  # nobody listens on the port yet
            logger(rec["step"], rec)
        assert logger.points_sent == 0 and logger.pending == 20
        server.start()
        try:
            for rec in steps[10:20]:
                logger(rec["step"], rec)
            logger.close()
            assert logger.points_sent == 40 and logger.pending == 0
            again = MetricsLogger(server.url, run_id, rank=0, flush_every=4)  # a resumed run: 11..30 again
            for rec in steps[10:]:
                again(rec["step"], rec)
            again.close()
            history = MlflowClient(server.url).get_metric_history(run_id, "loss")
            assert sorted(m.step for m in history) == list(range(1, 31))  # each step once
        finally:
            server.kill()


@pytest.mark.slow
def test_a_tracking_outage_mid_study_is_repaired_by_the_rerun(tmp_path):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from magdi_dist.track.metrics import log_missing

    server = Server(tmp_path / "server")
    server.start()
    try:
        path = _study_file(tmp_path, server.url)
        cmd, env = _study(path)
        study = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:  # the server dies once the cell's first loss points are in: training is under way
            deadline = time.monotonic() + 900
            while server.points("loss") == 0 and study.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert study.poll() is None, "the study ended before the outage"
            server.kill()
            killed = time.monotonic()
            out, err = study.communicate(timeout=900)
        finally:
            if study.poll() is None:
                study.kill()
        outage_s = time.monotonic() - killed
        assert study.returncode == 1, out[-3000:] + err[-3000:]
        summary_path = tmp_path / "study" / "study_summary.json"
        assert summary_path.is_file(), err[-3000:]  # the cell's result, from its files, not a traceback
        outage_summary = summary_path.read_text()
        summary = json.loads(outage_summary)
        (cell,) = summary["cells"]
        assert cell["status"] == "finished" and cell["accuracy"] is not None and cell["eval_ntp_loss"] > 0
        assert f"127.0.0.1:{server.port}" in cell["tracking_error"]  # named, per cell
        assert summary["status"] != "FINISHED"
        cell_dir = tmp_path / "study" / "cells" / CELL
        jsonl = (cell_dir / "metrics.jsonl").read_bytes()
        records = [json.loads(line) for line in jsonl.splitlines()]
        loss_steps = [r["step"] for r in records if "loss" in r]
        assert loss_steps == list(range(1, 41))  # every step is in the run's own file

        server.start()  # same port, same store
        taken = server.points("loss")
        assert 0 < taken < len(loss_steps)  # the outage cut training's curve short
        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        rerun = json.loads(again.stdout.strip().splitlines()[-1])
        assert (cell_dir / "metrics.jsonl").read_bytes() == jsonl  # nothing trained again
        (fixed,) = rerun["cells"]
        assert fixed["tracking_error"] is None and fixed["tracking"]["replayed"] > 0

        with mlflow_globals_restored():
            client = MlflowClient(server.url)
            exp = client.get_experiment_by_name("magdi-dist")
            runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
            roles = sorted((r.data.tags.get("magdi.role"), r.data.tags.get("magdi.cell"), r.info.status)
                           for r in runs)
            assert roles == [("cell", CELL, "FINISHED"), ("study", None, "FINISHED")]  # one each, no orphan
            (run,) = [r for r in runs if r.data.tags.get("magdi.role") == "cell"]
            assert rerun["parent_run_id"] == summary["parent_run_id"] == run.data.tags["mlflow.parentRunId"]
            history = client.get_metric_history(run.info.run_id, "loss")
            assert sorted(m.step for m in history) == loss_steps  # every step once: replayed, none twice
            evals = [r["step"] for r in records if "eval_ntp_loss" in r]
            assert evals and {m.step for m in client.get_metric_history(run.info.run_id, "eval_ntp_loss")} >= set(evals)
            versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
            assert len(versions) == 1 and rerun["champion"]["version"] == versions[0].version
            # What every cell pays when nothing was lost: reading the run's history, sending nothing.
            t0 = time.perf_counter()
            assert log_missing(server.url, run.info.run_id, [(r["step"], r) for r in records])["replayed"] == 0
            check_s = time.perf_counter() - t0
        results = os.environ.get("MAGDI_OUTAGE_RESULTS")
        if results:  # the measured numbers, for docs/reliability.md
            folder = Path(results)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "outage_run_summary.json").write_text(outage_summary)
            (folder / "outage_run_stderr.txt").write_text(err)  # what the study printed
            (folder / "rerun_summary.json").write_text(json.dumps(rerun, indent=2, default=str))
            (folder / "outage.json").write_text(json.dumps({
                "outage_s": round(outage_s, 1), "loss_points_in_metrics_jsonl": len(loss_steps),
                "loss_points_taken_before_the_outage": taken, "points_replayed": fixed["tracking"]["replayed"],
                "points_already_there": fixed["tracking"]["present"], "replay_s": fixed["tracking"]["replay_s"],
                "check_s_with_nothing_missing": round(check_s, 3),
                "retry_budget_env": RETRY_BUDGET}, indent=2))
    finally:
        server.kill()
