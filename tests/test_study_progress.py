"""The study's terminal without a study: the quiet redirect (every byte written to fds 1 and 2, by
Python, C-level writes or child processes, lands in the log file; the command's own lines reach the
real terminal) and the progress display's phase lines, periodic plain lines and metrics.jsonl tailing.
The whole demo's output is counted in test_study.py."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from magdi_dist.study import progress as progress_mod
from magdi_dist.study.progress import StudyProgress

NOISY = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from magdi_dist.study.terminal import study_terminal

    with study_terminal("cmd", Path(sys.argv[1]), verbose=sys.argv[2] == "1") as term:
        print("python print")
        os.write(2, b"fd-2 write\\n")
        warnings.warn("a library warning")
        logging.getLogger("lib").warning("a library log")
        subprocess.run(["echo", "child process"], check=True)
        term.progress.line("phase line")
        term.print("the result")
    print("after the block")
""")
NOISE = ("python print", "fd-2 write", "a library warning", "a library log", "child process")


def _run_noisy(tmp_path: Path, verbose: bool) -> tuple[subprocess.CompletedProcess, Path]:
    log = tmp_path / "out" / "cmd.log"
    proc = subprocess.run([sys.executable, "-c", NOISY, str(log), "1" if verbose else "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, log


def test_quiet_terminal_sends_every_other_write_to_the_log(tmp_path):
    proc, log = _run_noisy(tmp_path, verbose=False)
    assert proc.stdout.splitlines() == ["the result", "after the block"]
    assert proc.stderr.splitlines() == [f"cmd: Ray, worker and library logs go to {log} (--verbose shows them here)",
                                        "phase line"]
    logged = log.read_text()
    for noise in NOISE:
        assert noise in logged and noise not in proc.stdout + proc.stderr, noise
    assert "the result" not in logged and "after the block" not in logged


def test_verbose_terminal_redirects_nothing(tmp_path):
    proc, log = _run_noisy(tmp_path, verbose=True)
    for noise in NOISE:
        assert noise in proc.stdout + proc.stderr, noise
    assert "phase line" in proc.stderr and "the result" in proc.stdout and not log.exists()


def test_plain_progress_lines_follow_the_phases_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(progress_mod, "POLL_S", 0.05)
    out = io.StringIO()  # not a terminal: plain lines
    shown = StudyProgress(out, every_s=0.2)
    shown.begin(["small", "big"], "study s: 2 cells")
    metrics = tmp_path / "metrics.jsonl"
    train = shown.start("small", "train", total=4, metrics=metrics)
    train.log("preprocess: 1 of 1 input(s) need work (engine=ray)")
    train.log("  [1/1] data.jsonl: 60 records -> 60 MAGs, 0 rejected -> 435 rows, 1 shard(s)")
    train.log("preprocess: processed 1 new input(s), 0 up to date; 60 questions, 7 held out; manifest written (m)")
    train.log("train: 2 Ray Train worker(s), CPU")
    for step in range(1, 5):
        with metrics.open("a") as f:
            f.write(json.dumps({"step": step, "loss": 5.0 - step, "tokens": 500, "step_time_s": 0.25}) + "\n")
            f.write(json.dumps({"step": step, "eval_loss": 9.0}) + "\n")  # eval records are not steps
        time.sleep(0.3)
    train.done()
    evaluating = shown.start("small", "evaluate")
    evaluating.advance(8, 8)
    evaluating.done("8 questions, accuracy 50.0%")
    other = shown.start("big", "train", total=4, metrics=tmp_path / "never.jsonl")
    other.log("preprocess: nothing to do, 1 up to date")  # prepared by the first cell: no line
    shown.failed("big", RuntimeError("out of memory"))
    shown.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "study s: 2 cells"
    assert lines[1].startswith("preprocess: processed 1 new input(s), 0 up to date; 60 questions, 7 held out (")
    periodic = [ln for ln in lines if ln.startswith("[1/2] small  train    ") and "elapsed" in ln]
    assert periodic and all("/4, " in ln for ln in periodic), lines  # step / total while it runs
    assert any("loss " in ln and "2,000 tok/s" in ln for ln in periodic), lines
    assert [ln for ln in lines if "elapsed" not in ln][2:] == [
        next(ln for ln in lines if ln.startswith("[1/2] small  train    4/4 steps: loss 1.000, 2,000 tok/s (")),
        next(ln for ln in lines if ln.startswith("[1/2] small  evaluate 8 questions, accuracy 50.0% (")),
        "[2/2] big  FAILED   RuntimeError: out of memory",
    ]
    assert not [ln for ln in lines if "nothing to do" in ln]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_progress_on_a_terminal_draws_bars_and_leaves_prints_alone(capsys, tmp_path):
    screen = _Tty()
    shown = StudyProgress(screen)
    assert shown.live
    shown.begin(["small"], "study s: 1 cell")
    evaluating = shown.start("small", "evaluate")
    evaluating.advance(3, 8)
    time.sleep(0.5)  # a few refreshes of the live display
    print("a library's print")  # goes where prints go (the log file), never through the display
    evaluating.done("8 questions, accuracy 50.0%")
    shown.close()
    drawn = screen.getvalue()
    assert "3/8" in drawn and "━" in drawn  # the bar, cell i of n, while it ran
    assert "study s: 1 cell" in drawn and "[1/1] small  evaluate 8 questions, accuracy 50.0% (" in drawn
    assert "a library's print" not in drawn and capsys.readouterr().out == "a library's print\n"


def test_silent_progress_still_prints_the_launcher_log(capsys, tmp_path):
    silent = StudyProgress(None)  # run_study's default for library callers
    silent.begin(["c"], "header")
    phase = silent.start("c", "train", total=2, metrics=tmp_path / "metrics.jsonl")
    phase.log("outputs: somewhere")
    phase.done()
    silent.close()
    assert capsys.readouterr().out == "outputs: somewhere\n"
