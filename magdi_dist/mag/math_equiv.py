"""Equivalence of MATH-style (LaTeX) answers: normalisation, then sympy under a hard time limit.

Three steps, cheapest first: string equality after :func:`normalize_latex`, exact numeric comparison
when both sides are plain numbers (``\\frac{1}{2}`` vs ``0.5``), and only then sympy.

Why no ``sympy.parsing.latex``: it needs the antlr4 (or lark) runtime, which is not a dependency of
this project, so LaTeX is converted by hand (:func:`latex_to_sympy`) to sympy's own syntax for a small
whitelisted vocabulary (``\\frac``, ``\\sqrt``, ``^``, ``\\cdot``, ``\\pi``, a few functions). Anything
outside it is "not equal" rather than a guess. The converted text is checked against a character and
name whitelist before sympy sees it: sympy's parser evaluates its input, and teacher text is
untrusted.

Why a subprocess for the time limit: sympy can run for minutes (``9^{9^{9}}``, ``(x+1)^{3000}``) and
a Python thread cannot be stopped, while ``SIGALRM`` only works in the main thread (Ray runs tasks
in worker threads). So sympy runs in one long-lived helper process per grading process (started on
first use, about one second to import sympy, reused after); when a comparison passes its deadline
the helper is killed, the comparison counts as *not equal*, and the next comparison starts a fresh
helper. It works from any thread, in Ray workers and in daemonic processes (``subprocess``, not
``multiprocessing``), and a forked child never shares its parent's helper. POSIX only (``select``
on a pipe), like the rest of the trainer.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction

SYMPY_TIMEOUT_S = 2.0
"""Seconds one sympy comparison may take (not counting the helper's start); later ones count as unequal."""
_STARTUP_TIMEOUT_S = 120.0
_REL_TOL = 1e-6

# --- normalisation ---------------------------------------------------------------------------------
_TEXT_CMD = r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf)"
_SPACING = re.compile(r"\\[!,;: ]|\\q?quad(?![a-zA-Z])|~")


def _group(s: str, start: int) -> tuple[str, int] | None:
    """The ``{...}`` group opening at ``s[start]`` (nested braces) and the index after it."""
    if start >= len(s) or s[start] != "{":
        return None
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return s[start + 1 : i], i + 1
    return None


def _arg(s: str, start: int) -> tuple[str, int] | None:
    """One LaTeX macro argument: a brace group, or a single character (``\\frac34``, ``\\sqrt2``)."""
    while start < len(s) and s[start] == " ":
        start += 1
    if start >= len(s):
        return None
    if s[start] == "{":
        return _group(s, start)
    if s[start] in "}\\":
        return None
    return s[start], start + 1


_MAX_DEPTH = 50


def readable(s: str) -> bool:
    """Balanced braces, nested at most 50 deep: the parsers here recurse per group, and no real
    answer nests that deep, so deeper text is unreadable rather than a RecursionError."""
    depth = 0
    for ch in s:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0 or depth > _MAX_DEPTH:
            return False
    return depth == 0


def _brace_shorthand(s: str) -> str:
    """``\\frac34`` -> ``\\frac{3}{4}`` and ``\\sqrt2`` -> ``\\sqrt{2}``, so both spellings compare equal."""
    out, i = [], 0
    for m in re.finditer(r"\\(frac|sqrt)(?![a-zA-Z])", s):
        if m.start() < i:
            continue
        out.append(s[i : m.end()])
        j, nargs = m.end(), 2 if m.group(1) == "frac" else 1
        if nargs == 1 and j < len(s) and s[j] == "[":  # \sqrt[n]{x}: leave the index alone
            i = j
            continue
        for _ in range(nargs):
            arg = _arg(s, j)
            if arg is None:
                break
            out.append("{" + _brace_shorthand(arg[0]) + "}")
            j = arg[1]
        i = j
    out.append(s[i:])
    return "".join(out)


def _strip_text(s: str) -> str:
    """Drop a trailing ``\\text{...}`` after some content (a unit: ``10\\text{ cm}``), unwrap the rest.

    Unwrapping keeps answers that *are* text (``\\text{(A)}``, ``\\text{yes}``) comparable.
    """
    m = re.search(_TEXT_CMD + r"\s*\{", s)
    while m:
        grp = _group(s, m.end() - 1)
        if grp is None:
            return s
        if s[: m.start()].strip() and not s[grp[1] :].strip():
            return s[: m.start()]
        s = s[: m.start()] + grp[0] + s[grp[1] :]
        m = re.search(_TEXT_CMD + r"\s*\{", s)
    return s


def normalize_latex(answer: str) -> str:
    """A canonical string for a final LaTeX answer (MATH-style normalisation, Hendrycks et al.)."""
    s = answer.strip().replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])", "", s)
    s = _SPACING.sub(" ", s)
    s = _strip_text(s)
    s = s.replace("\\%", "").replace("%", "").strip()
    # "x = 3" -> "3": a short left-hand side is a variable name, not part of the answer.
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if len(lhs.strip()) <= 2 and rhs.strip():
            s = rhs
    # Drop whitespace, except the one space that ends a macro name before a letter ("\pi r"),
    # kept through the removal as a NUL placeholder.
    s = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\x00", s)
    s = _brace_shorthand(re.sub(r"\s+", "", s).replace("\x00", " "))
    s = s.rstrip(".")
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)  # ".5" -> "0.5"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # a thousands-grouped number, not a tuple
        s = s.replace(",", "")
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)  # "(A)" -> "A"
    return s


# --- plain numbers ---------------------------------------------------------------------------------
_FRAC_NUM = re.compile(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}")


def plain_number(s: str) -> Fraction | None:
    """The exact value of a normalised answer that is a plain number (``3``, ``-0.25``, ``1/2``, ``\\frac{1}{2}``)."""
    m = _FRAC_NUM.fullmatch(s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}".replace("--", "")
    if not re.fullmatch(r"[+-]?\d+(\.\d+)?(/[+-]?\d+(\.\d+)?)?", s):
        return None
    try:
        num, _, den = s.partition("/")
        return Fraction(num) / Fraction(den) if den else Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None


# --- LaTeX -> sympy syntax --------------------------------------------------------------------------
_NAMES = {"sqrt", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "oo", "E"}
_MACROS = {"cdot": "*", "times": "*", "div": "/", "pi": " pi ", "infty": " oo "}
_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp"}
_SAFE = re.compile(r"[0-9a-zA-Z+\-*/(). ]*")


def latex_to_sympy(s: str) -> str | None:
    """sympy syntax for a normalised LaTeX expression, or None outside the supported vocabulary."""
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            m = re.match(r"\\([a-zA-Z]+)", s[i:])
            if not m:
                return None
            name, j = m.group(1), i + m.end()
            if name == "frac":
                num = _arg(s, j)
                den = _arg(s, num[1]) if num else None
                if num is None or den is None:
                    return None
                a, b = latex_to_sympy(num[0]), latex_to_sympy(den[0])
                if a is None or b is None:
                    return None
                out.append(f"(({a})/({b}))")
                i = den[1]
            elif name == "sqrt":
                root = None
                if j < len(s) and s[j] == "[":  # \sqrt[3]{x}
                    close = s.find("]", j)
                    root = latex_to_sympy(s[j + 1 : close]) if close > j else None
                    if root is None:
                        return None
                    j = close + 1
                arg = _arg(s, j)
                inner = latex_to_sympy(arg[0]) if arg else None
                if arg is None or inner is None:
                    return None
                out.append(f"(({inner})**(1/({root})))" if root else f"sqrt({inner})")
                i = arg[1]
            elif name in _MACROS:
                out.append(_MACROS[name])
                i = j
            elif name in _FUNCS:
                out.append(f" {name} ")
                i = j
            else:
                return None
        elif ch == "^":
            arg = _arg(s, i + 1)
            inner = latex_to_sympy(arg[0]) if arg else None
            if inner is None:
                return None
            out.append(f"**({inner})")
            i = arg[1]
        else:
            out.append({"{": "(", "}": ")"}.get(ch, ch))
            i += 1
    return safe_syntax("".join(out))


def safe_syntax(text: str) -> str | None:
    """``text`` if it only holds numbers, operators, brackets, known names and one-letter symbols.

    sympy's parser ends in ``eval``; this whitelist (no underscores, quotes, commas, attribute
    access or long names) is what makes handing it teacher text acceptable.
    """
    if not _SAFE.fullmatch(text) or re.search(r"\.\s*[a-zA-Z]", text):
        return None
    for word in re.findall(r"[a-zA-Z]+", text):
        if word not in _NAMES and len(word) > 2:  # "xy" is x*y; longer runs are prose, not algebra
            return None
    return text or None


# --- the sympy helper process -----------------------------------------------------------------------
def _sympy_equal_local(a_src: str, b_src: str) -> bool:
    """Runs in the helper: parse both (implicit multiplication, ``^`` as power) and compare."""
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    if safe_syntax(a_src) is None or safe_syntax(b_src) is None:
        return False
    transformations = (*standard_transformations, implicit_multiplication_application, convert_xor)
    # One-letter names are plain symbols (sympy's own I, N, S, O, Q would be objects or functions),
    # except the LaTeX conventions e (Euler's number) and i (the imaginary unit).
    local = {c: sympy.Symbol(c) for c in "abcdfghjklmnopqrstuvwxyzABCDFGHIJKLMNOPQRSTUVWXYZ"}
    local.update({"ln": sympy.log, "E": sympy.E, "e": sympy.E, "i": sympy.I})
    a = parse_expr(a_src, transformations=transformations, local_dict=local)
    b = parse_expr(b_src, transformations=transformations, local_dict=local)
    if a == b:
        return True
    diff = sympy.simplify(a - b)
    if diff == 0:
        return True
    if diff.is_number and b.is_number:
        scale = max(1.0, abs(complex(sympy.N(b))))
        return abs(complex(sympy.N(diff))) <= _REL_TOL * scale
    return False


def _serve() -> None:
    """Helper main loop: one JSON request ``{"a", "b"}`` per stdin line, one ``1``/``0`` line back."""
    # Import sympy and run one comparison before "ready": the first simplify() in a process takes
    # about half a second of lazy set-up, which must not be billed to a teacher's answer.
    _sympy_equal_local("x**2-1", "(x-1)(x+1)")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = _sympy_equal_local(req["a"], req["b"])
        except Exception:  # any parse or sympy failure means "not shown equal"
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


_BOOT = (
    "import importlib.util, sys; spec = importlib.util.spec_from_file_location('_magdi_sympy', sys.argv[1]);"
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
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._pid, self._buf = os.getpid(), b""
        if self._readline(_STARTUP_TIMEOUT_S) != b"ready":
            self._kill()
            raise RuntimeError("the sympy helper process for math grading did not start")

    def equal(self, a_src: str, b_src: str, timeout: float) -> bool:
        with self._lock:
            self._ensure()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps({"a": a_src, "b": b_src}).encode() + b"\n")
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


def sympy_equal(a: str, b: str, timeout_s: float | None = None) -> bool:
    """Whether two normalised LaTeX answers are equal by sympy, within ``timeout_s`` seconds."""
    a_src, b_src = latex_to_sympy(a), latex_to_sympy(b)
    if a_src is None or b_src is None:
        return False
    return _HELPER.equal(a_src, b_src, SYMPY_TIMEOUT_S if timeout_s is None else timeout_s)


# --- the comparison ---------------------------------------------------------------------------------
def _split_top_level(s: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        depth += 1 if ch in "({[" else -1 if ch in ")}]" else 0
        if ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _wrapped(s: str) -> str | None:
    """The bracket pair around all of ``s`` ("()" for "(1,2)", None for "(a)(b)" or "5")."""
    if len(s) < 2 or s[0] + s[-1] not in ("()", "[]"):
        return None
    depth = 0
    for i, ch in enumerate(s):
        depth += 1 if ch in "([" else -1 if ch in ")]" else 0
        if depth == 0 and i < len(s) - 1:
            return None
    return s[0] + s[-1]


def _equal_normalised(a: str, g: str, timeout_s: float | None) -> bool:
    if a == g:
        return True
    na, ng = plain_number(a), plain_number(g)
    if na is not None and ng is not None:  # exact for integers, like the numeric family
        if na.denominator == 1 and ng.denominator == 1:
            return na == ng
        return abs(na - ng) <= _REL_TOL * max(1, abs(ng))
    if _wrapped(a) and _wrapped(a) == _wrapped(g):
        a, g = a[1:-1], g[1:-1]  # (1,2) vs (1, 2.0): compare the insides element-wise
    pa, pg = _split_top_level(a), _split_top_level(g)
    if len(pa) > 1 or len(pg) > 1:  # tuples / lists: same length, equal in order
        pairs = zip(pa, pg, strict=True) if len(pa) == len(pg) else None
        return pairs is not None and all(_equal_normalised(x, y, timeout_s) for x, y in pairs)
    return sympy_equal(a, g, timeout_s)


def math_equal(answer: str, gold: str, *, timeout_s: float | None = None) -> bool:
    """Whether a final answer (already un-boxed) equals the gold, for the math family."""
    if not (readable(answer) and readable(gold)):
        return False
    a, g = normalize_latex(answer), normalize_latex(gold)
    return bool(a) and _equal_normalised(a, g, timeout_s)
