"""Quiet by default: a study command's own output on the terminal, everything else in a log file.

A study's noise comes from everywhere: Ray's driver and every worker (forwarded to the driver's
stdout/stderr), Ray Data's progress tables, DeepSpeed, MLflow's and transformers' logs, warnings and
weight-loading bars, and C++ logs written straight to file descriptor 2. Library switches would each
silence one source and lose what it said; instead the command's file descriptors 1 and 2 are pointed
at the log file for its whole length, so everything lands there (also what child processes started
meanwhile inherit), and the command writes its phase lines, progress and results to copies of the
original descriptors. ``verbose`` keeps the old behaviour: nothing redirected, no log file.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from magdi_dist.study.progress import StudyProgress


@dataclass
class Terminal:
    out: TextIO  # results: the table, the champion, where to look
    err: TextIO  # phase lines and the live progress
    progress: StudyProgress
    log_path: Path | None  # None: --verbose, the logs are on the terminal

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


@contextlib.contextmanager
def _redirected(log_path: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """fds 1 and 2 -> ``log_path`` (appended); yields text streams on the original 1 and 2."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    out = os.fdopen(saved[0], "w", buffering=1, closefd=False)
    err = os.fdopen(saved[1], "w", buffering=1, closefd=False)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield out, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (out, err):
            f.close()
        for fd in (*saved, log_fd):
            os.close(fd)


@contextlib.contextmanager
def study_terminal(command: str, log_path: Path, *, verbose: bool = False, every_s: float = 30.0
                   ) -> Iterator[Terminal]:
    """The terminal of one study command. The first line names the log file; the live display runs
    for the block's length. On an error the last line says where the whole story is (the exception
    itself still reaches the caller, after the terminal is restored)."""
    if verbose:
        progress = StudyProgress(sys.stderr, live=False, every_s=every_s)  # a live display would fight the logs
        try:
            yield Terminal(sys.stdout, sys.stderr, progress, None)
        finally:
            progress.close()
        return
    with _redirected(log_path) as (out, err):
        # Progress on stderr, results on stdout: ``--json`` output stays one clean line to pipe on.
        print(f"{command}: Ray, worker and library logs go to {log_path} (--verbose shows them here)",
              file=err, flush=True)
        progress = StudyProgress(err, every_s=every_s)
        try:
            yield Terminal(out, err, progress, log_path)
        except BaseException as err_:
            progress.close()  # the live display first, so the line lands below it
            if not isinstance(err_, SystemExit) and type(err_).__name__ != "Exit":  # typer.Exit: a normal end
                print(f"{command} stopped: {type(err_).__name__}: {err_} (the full log: {log_path})",
                      file=err, flush=True)
            raise
        finally:
            progress.close()
