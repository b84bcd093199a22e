"""What a study shows while it runs: one line as each phase ends (preprocessing, each cell's training,
each cell's evaluation), and the phases now running as a live display.

On a terminal the running phases are rich progress bars (cell i of n, step / total, loss, tokens/s,
elapsed, ETA) drawn under the finished lines and cleared at the end. Anywhere else (a pipe, a CI log)
a live display would be hundreds of redrawn lines, so each running phase gets one plain line every
``every_s`` seconds, and only when it moved.

Where the numbers come from, all on the driver: training progress is the cell's ``metrics.jsonl``
(rank 0 appends a line per logged step; a thread tails it), preprocessing is the launcher's log
messages (``train_on_ray(log=...)``), evaluation is ``evaluate(on_progress=...)``. Nothing here
changes what the workers do.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from pathlib import Path
from typing import TextIO

POLL_S = 1.0
HEARTBEAT = 4  # intervals: a plain line for a phase that has not moved in this many
RATE_WINDOW = 20  # steps: tokens/s over the last ones, not the whole run (the first steps warm up)
_INPUT_DONE = re.compile(r"^\s*\[(\d+)/(\d+)\]")  # preprocess: "  [i/n] path: ..." per finished input


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Phase:
    """One running phase: ``advance(done, total)`` moves it, ``done(summary)`` ends it with a line."""

    def __init__(self, owner: StudyProgress, key: str, label: str, total: int | None = None,
                 metrics: Path | None = None):
        self.owner, self.key, self.label, self.total = owner, key, label, total
        self.completed, self.info, self.metrics = 0, "", metrics
        self.started = time.monotonic()
        self.first: tuple[float, int] | None = None  # (time, step) of the first progress: the ETA's rate
        self.steps: list[dict] = []
        self.offset = 0  # bytes of ``metrics`` already read
        self.printed: tuple | None = None  # the state of the last plain line, and when
        self.printed_at = self.started
        self.task = None  # the rich task, on a terminal

    # -- driven by the caller -------------------------------------------------------------------

    def advance(self, completed: int, total: int | None = None) -> None:
        with self.owner.lock:
            if total is not None:
                self.total = total
            if self.first is None:  # counted from the phase's start: the ETA's rate includes loading
                self.first = (self.started, 0)
            self.completed = completed
        self.owner.refresh(self)

    def log(self, msg: str) -> None:
        """The launcher's log: kept where logs go (stdout: the log file unless ``--verbose``), and read
        for the preprocessing phase and for what the training phase is waiting on."""
        print(msg, flush=True)  # as the launcher's default (preprocess.pipeline.print_log) does
        owner = self.owner
        if msg.startswith("preprocess:") or _INPUT_DONE.match(msg):
            pre = owner.preprocess_phase()
            text = msg.removeprefix("preprocess:").strip()
            if (m := _INPUT_DONE.match(msg)) is not None:
                pre.advance(int(m[1]), int(m[2]))
            elif text.startswith("processed"):  # the data was (re)built: its summary is a phase line
                pre.done(text.split("; manifest")[0])
            elif text.startswith("nothing to do"):  # prepared by an earlier cell: no line
                owner.drop(pre)
            else:  # what it is doing now, without the details in brackets
                pre.info = text.split(" (")[0][:60]
                owner.refresh(pre)
        elif msg.startswith("train:") and "worker" in msg:
            owner.drop_preprocess()
            self.info = "starting the workers"
            owner.refresh(self)

    def done(self, summary: str | None = None) -> None:
        if self.metrics is not None:
            self.poll()
            summary = summary or self.train_summary()
        elapsed = time.monotonic() - self.started
        self.owner.finish(self, f"{summary} ({elapsed:.0f} s)" if summary else f"done in {elapsed:.0f} s")

    # -- training: the cell's metrics.jsonl -------------------------------------------------------

    def poll(self) -> None:
        with self.owner.lock:  # the display's thread and the caller's done() both read the file
            self._poll()

    def _poll(self) -> None:
        if self.metrics is None or not self.metrics.is_file():
            return
        size = self.metrics.stat().st_size
        if size < self.offset:  # rewritten (a fresh run, or a resume dropping lines): read it again
            self.offset, self.steps = 0, []
        if size == self.offset:
            return
        with self.metrics.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for next time
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "loss" in record and "eval_loss" not in record:
                self.steps.append(record)
        del self.steps[:-RATE_WINDOW]  # only the recent steps count (the rate, the last loss)
        if self.steps:
            step = int(self.steps[-1]["step"])
            if self.first is None:
                self.first = (time.monotonic(), step)
            self.completed = step
            self.info = self.step_info()
            self.owner.refresh(self)

    def step_info(self) -> str:
        recent = self.steps[-RATE_WINDOW:]
        seconds = sum(r.get("step_time_s", 0.0) for r in recent)
        rate = sum(r.get("tokens", 0) for r in recent) / seconds if seconds > 0 else 0.0
        return f"loss {self.steps[-1]['loss']:.3f}, {rate:,.0f} tok/s"

    def train_summary(self) -> str | None:
        if not self.steps:
            return None
        of = f"/{self.total}" if self.total else ""
        return f"{self.completed}{of} steps: {self.step_info()}"

    # -- for the plain lines ----------------------------------------------------------------------

    def eta(self) -> str | None:
        if not self.total or self.first is None or self.completed <= self.first[1]:
            return None
        t0, c0 = self.first
        per = (time.monotonic() - t0) / (self.completed - c0)
        return _clock(per * max(self.total - self.completed, 0))

    def status(self) -> str:
        parts = [f"{self.completed}/{self.total}" if self.total else "", self.info,
                 f"{_clock(time.monotonic() - self.started)} elapsed"]
        if (eta := self.eta()) is not None:
            parts.append(f"ETA {eta}")
        return ", ".join(p for p in parts if p)


class StudyProgress:
    """The study's display on ``stream``; ``None`` shows nothing (a library caller's default: the
    launcher's log still prints as it always did). Thread-safe: cells may run concurrently."""

    def __init__(self, stream: TextIO | None, *, live: bool | None = None, every_s: float = 30.0):
        self.stream, self.every_s = stream, every_s
        self.live = bool(stream is not None and (stream.isatty() if live is None else live))
        self.lock = threading.RLock()
        self.phases: dict[str, Phase] = {}
        self.index: dict[str, int] = {}
        self.preprocessed = False
        self._progress = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_plain = time.monotonic()

    # -- the study's events ----------------------------------------------------------------------

    def begin(self, cells: list[str], header: str | None = None) -> None:
        self.index = {name: i for i, name in enumerate(cells, 1)}
        if self.stream is None:
            return
        if header:
            self.line(header)
        if self.live:
            from rich import progress as rp
            from rich.console import Console

            # transient: the bars are cleared at the end, leaving the phase lines and the results. No
            # redirect of sys.stdout/stderr: rich would draw every library's print on the terminal.
            self._progress = rp.Progress(rp.SpinnerColumn(), rp.TextColumn("{task.description}"),
                                         rp.BarColumn(bar_width=24), rp.MofNCompleteColumn(),
                                         rp.TextColumn("{task.fields[info]}"), rp.TimeElapsedColumn(),
                                         rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
                                         console=Console(file=self.stream), transient=True,
                                         redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
        self._thread = threading.Thread(target=self._run, name="study-progress", daemon=True)
        self._thread.start()

    def name(self, cell: str) -> str:
        i = self.index.get(cell)
        return f"[{i}/{len(self.index)}] {cell}" if i else cell

    def start(self, cell: str, what: str, *, total: int | None = None, metrics: Path | None = None) -> Phase:
        # A cell's phase is "[i/n] cell  what"; the study's own (preprocessing) is just "what:".
        key, label = (f"{cell}/{what}", f"{self.name(cell)}  {what:<8}") if cell else (what, f"{what}:")
        phase = Phase(self, key, label, total, metrics)
        if metrics is not None:
            phase.info = "preparing the run"  # until the workers start (the data may be prepared first)
        with self.lock:
            self.phases[phase.key] = phase
            if self._progress is not None:
                phase.task = self._progress.add_task(phase.label, total=total, info="")
        return phase

    def preprocess_phase(self) -> Phase:
        with self.lock:
            return self.phases.get("preprocess") or self.start("", "preprocess")

    def drop_preprocess(self) -> None:
        with self.lock:
            if "preprocess" in self.phases:
                self.drop(self.phases["preprocess"])

    def skipped(self, cell: str, run_id: str) -> None:
        self.line(f"{self.name(cell)}  skipped  (finished before: run {run_id})")

    def failed(self, cell: str, err: BaseException) -> None:
        with self.lock:
            for phase in [p for p in self.phases.values() if p.key.startswith(f"{cell}/")]:
                self.drop(phase)
        self.line(f"{self.name(cell)}  FAILED   {type(err).__name__}: {err}")

    def line(self, text: str) -> None:
        if self.stream is None:
            return
        with self.lock:
            if self._progress is not None:
                self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                print(text, file=self.stream, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    # -- used by the phases ----------------------------------------------------------------------

    def refresh(self, phase: Phase) -> None:
        with self.lock:
            if self._progress is not None and phase.task is not None:
                self._progress.update(phase.task, completed=phase.completed, total=phase.total, info=phase.info)

    def drop(self, phase: Phase) -> None:
        with self.lock:
            if self.phases.get(phase.key) is phase:
                del self.phases[phase.key]
                if self._progress is not None and phase.task is not None:
                    self._progress.remove_task(phase.task)
                    self._progress.refresh()  # else the next line printed redraws the finished bar once

    def finish(self, phase: Phase, summary: str) -> None:
        with self.lock:
            if self.phases.get(phase.key) is not phase:
                return  # already ended (a preprocessing summary seen twice)
            self.drop(phase)
            self.line(f"{phase.label} {summary}")

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            with self.lock:
                running = list(self.phases.values())
            for phase in running:
                with contextlib.suppress(OSError):  # the file moved under us (a folder rebuilt): next time
                    phase.poll()
            now = time.monotonic()
            if self._progress is None and now - self._last_plain >= self.every_s:
                self._last_plain = now
                for phase in running:
                    state = (phase.completed, phase.total, phase.info)
                    # A phase that did not move adds a line only now and then (it is still alive); one
                    # that has just started waits, as most short ones end first and say it in theirs.
                    moved = state != phase.printed or now - phase.printed_at >= HEARTBEAT * self.every_s
                    if moved and now - phase.started >= self.every_s / 2:
                        phase.printed, phase.printed_at = state, now
                        self.line(f"{phase.label} {phase.status()}")
