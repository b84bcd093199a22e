"""Equivalence of MATH-style (LaTeX) answers: ``math-verify`` (Hugging Face's MATH grader: LaTeX parsed
by latex2sympy2_extended's ANTLR grammar, compared by sympy) under a hard time limit of our own.

Why math-verify, not our own converter: it replaced 427 hand-written lines (normalisation, a LaTeX ->
sympy-syntax translator for a whitelisted vocabulary, tuple splitting) and passes every row of the
math table in tests/test_grading.py (33/33; the slowest row 0.17 s once the helper is warm, on a
2-core box). It also reads what the hand-written whitelist called "not equal" (measured:
``\\log_2 8`` = 3, ``\\binom{5}{2}`` = 10, ``5!`` = 120, ``x \\in [1,2]`` = ``[1,2]``, ``5\\text{ cm}^2``
= 5, ``x=1 \\text{ or } x=2`` = ``1,2``). Its conventions differ in a few places, on purpose upstream:
a bare list is a set (``2,3`` = ``3,2``; a bracketed tuple stays ordered), ``10\\%`` = 0.1 (and still
= 10), numbers agree to 6 decimals (``3.14159`` != pi, which a relative 1e-6 had let through), and
``e^{i\\pi}`` is not -1.

Answers are given to it as ``$<answer>$``: ``\\boxed{<answer>}`` was measured too and reads ``5.`` as
no number (the one failing row), ``$...$`` reads all 33 rows.

Why a subprocess for the time limit: math-verify's own timeouts are ``signal.alarm``, so off the main
thread (Ray runs actor methods with ``max_concurrency`` > 1, and any threaded caller, in worker
threads) ``parse``/``verify`` raise ``ValueError`` ("doesn't support threaded environment"), and with
them switched off nothing stops a comparison (``9^{9^{9^{9}}}`` against ``1``: past 20 s, measured).
A Python thread cannot be stopped either. So math-verify runs in one long-lived helper process per
grading process (started on first use, about two seconds to import math-verify and sympy, reused
after); when a comparison passes its deadline the helper is killed, the comparison counts as *not
equal*, and the next comparison starts a fresh helper. It works from any thread, in Ray workers and
in daemonic processes (``subprocess``, not ``multiprocessing``), and a forked child never shares its
parent's helper. POSIX only (``select`` on a pipe), like the rest of the trainer.

Teacher text is untrusted: math-verify parses LaTeX with a grammar (no ``eval``) and hands plain text
to sympy's ``parse_expr`` only when its regex has limited it to digits, operators and spaces
(tests/test_grading.py feeds it code that would write a file).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

MATH_TIMEOUT_S = 2.0
"""Seconds one comparison may take (not counting the helper's start); later ones count as unequal."""
_STARTUP_TIMEOUT_S = 120.0
_MAX_DEPTH = 50


def readable(s: str) -> bool:
    """Balanced braces, nested at most 50 deep. No real answer nests that deep, and the ANTLR parser
    recurses per group (2000 levels took it 16 s), so deeper text is unreadable without asking it."""
    depth = 0
    for ch in s:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0 or depth > _MAX_DEPTH:
            return False
    return depth == 0


# --- the helper process -----------------------------------------------------------------------------
def _equal_local(answer: str, gold: str) -> bool:
    """Runs in the helper: math-verify's parse and verify, its timeouts off (the client's deadline
    kills this process instead). ``verify`` takes the gold first: it is not symmetric for sets."""
    from math_verify import parse, verify

    g = parse(f"${gold}$", parsing_timeout=None)
    a = parse(f"${answer}$", parsing_timeout=None)
    return bool(g and a and verify(g, a, timeout_seconds=None))


def _serve() -> None:
    """Helper main loop: one JSON request ``{"a", "g"}`` per stdin line, one ``1``/``0`` line back."""
    import logging

    # math-verify warns once that its timeouts are off; here that is by design (stderr is discarded
    # anyway, but the warning must not look like a fault to anyone who attaches it).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Import math-verify and sympy and run one comparison before "ready": the first comparison in a
    # process pays about a second of lazy set-up, which must not be billed to a teacher's answer.
    _equal_local("x^2-1", "(x-1)(x+1)")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = _equal_local(req["a"], req["g"])
        except Exception:  # any parse or sympy failure means "not shown equal"
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


_BOOT = (
    "import importlib.util, sys; spec = importlib.util.spec_from_file_location('_magdi_math', sys.argv[1]);"
    " mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); mod._serve()"
)


class _Helper:
    """The client side: one helper per process, guarded by a lock, restarted after a kill or a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = -1
        self._buf = b""

    def _kill(self) -> None:
        if self._proc is not None and self._pid == os.getpid():
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _readline(self, timeout: float) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.strip()

    def _ensure(self) -> None:
        if self._pid != os.getpid():  # forked: the pipes belong to the parent's helper
            self._proc = None
        if self._proc is not None and self._proc.poll() is None:
            return
        # Loaded by file path, not ``-m magdi_dist.mag.math_equiv``: the helper needs this file only,
        # not the mag package (pydantic) it sits in.
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._pid, self._buf = os.getpid(), b""
        if self._readline(_STARTUP_TIMEOUT_S) != b"ready":
            self._kill()
            raise RuntimeError("the math-verify helper process for math grading did not start")

    def equal(self, answer: str, gold: str, timeout: float) -> bool:
        with self._lock:
            self._ensure()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps({"a": answer, "g": gold}).encode() + b"\n")
                self._proc.stdin.flush()
            except BrokenPipeError:
                self._kill()
                return False
            line = self._readline(timeout)
            if line is None:  # past the deadline (or the helper died): stop it, count as unequal
                self._kill()
                return False
            return line == b"1"

    def close(self) -> None:
        with self._lock:
            self._kill()


_HELPER = _Helper()
atexit.register(_HELPER.close)


def math_equal(answer: str, gold: str, *, timeout_s: float | None = None) -> bool:
    """Whether a final answer (already un-boxed) equals the gold, for the math family, within
    ``timeout_s`` seconds (default :data:`MATH_TIMEOUT_S`; past it: not equal)."""
    if not (readable(answer) and readable(gold)) or not answer.replace("$", "").strip():
        return False
    if answer.strip() == gold.strip():  # equal text is an equal answer: no helper needed
        return True
    return _HELPER.equal(answer, gold, MATH_TIMEOUT_S if timeout_s is None else timeout_s)
