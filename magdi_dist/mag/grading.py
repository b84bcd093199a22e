"""Grading teacher answers against the gold answer, per task family.

Families (``schema.TASK_FAMILIES``): ``yes_no``, ``multiple_choice``, ``numeric`` (GSM8K-style) and
``math`` (MATH-style LaTeX, see :mod:`magdi_dist.mag.math_equiv`). Callers outside ``mag`` read and
grade answers through :mod:`magdi_dist.mag.answers`, which re-exports this module's API.

Two kinds of failure differ on purpose: an answer that cannot be parsed is simply *incorrect*
(teachers write ``NONE``, ``''`` or prose), while a gold that cannot be parsed raises
:class:`GoldAnswerError`, because a record whose gold we cannot read must be rejected rather than
silently train on all-incorrect labels.

Every family first takes the content of the last ``\\boxed{...}`` when the text has one, so a whole
response can be graded as well as an extracted answer. Rules other modules rely on:

* numeric: "$1,000.00" == 1000, "18." == 18, "1/2" == 0.5; a percent sign is a unit like "$"
  ("24%" == 24, as GSM8K golds write percentages, and != 0.24); a clock time reads as hours
  ("2:00 pm" == 2, GSM8K's gold for "what time ..."); text that is not a clean number is graded
  by its last number ("60 miles per day" == 60), unless that number is a bound ("d \\leq 230");
  integers compare exactly, decimals within a relative 1e-6. A numeric gold must be a clean
  number or contain exactly one number.
* multiple choice: answers and gold become a 0-based option index (see :func:`parse_choice`).
* yes/no: yes/true and no/false; an answer may start with it ("No, because ..."), a gold may not.
* math: :func:`magdi_dist.mag.math_equiv.math_equal` (math-verify, with a hard 2 s limit per
  comparison; a timeout counts as not equal). A math gold must have balanced braces and some text.
"""

from __future__ import annotations

import math
import re

from magdi_dist.mag.math_equiv import math_equal, readable
from magdi_dist.mag.schema import MAG, Label, Response

NUMERIC_REL_TOL = 1e-6


class GoldAnswerError(ValueError):
    """The gold answer cannot be read for its task family (the readers reject the record)."""


# --- \boxed{} ---------------------------------------------------------------------------------------
def extract_boxed(text: str | None) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``), nested braces ok.

    A last box that never closes (a truncated generation) is skipped for the one before it.
    """
    if not text:
        return None
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)(?![a-zA-Z])", text)]
    for m in reversed(starts):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1 : j].strip()
        elif i > m.end():  # "\boxed 5": one token, up to whitespace or the closing "$"
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0)
    return None


def _unbox(text: str) -> str:
    boxed = extract_boxed(text)
    return text if boxed is None else boxed


# --- numbers ----------------------------------------------------------------------------------------
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"  # thousands separators only in groups of three
_DEC = rf"(?:{_INT}(?:\.\d*)?|\.\d+)"
_CLEAN = re.compile(rf"([+-]?)({_DEC}(?:[eE][+-]?\d+)?|{_INT}/{_INT})")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?!\d)(?:\s*(?:[ap]\.?m\.?))?", re.IGNORECASE)
# A number token; "Rs.1560" holds 1560 (a "." after a letter is no decimal point), "1.5" holds one number.
_TOKEN = re.compile(
    rf"(?<!\d)(?<!\d\.)(?:(\d{{1,2}}):(\d{{2}})(?!\d)|{_INT}/{_INT}(?![\d.])|{_INT}(?:\.\d*)?)|(?<![\w.])\.\d+"
)


_BOUND = re.compile(r"(?:\\[lg]eq?(?:slant)?|\\[lg]t|\\neq?|[<>\u2264\u2265\u2260])\s*-?\s*$")


def _numeric_text(text: str) -> str:
    """Strip what GSM8K-style answers wrap numbers in: $, %, \\text{}, thin spaces, \\frac, units' powers."""
    s = _unbox(text).replace("\u2212", "-")
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\\[!,;: ]|\\(?:left|right)(?![a-zA-Z])|~|\\?\$|\\?%", " ", s)
    s = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"\1/\2", s)
    s = re.sub(r"(?<=[a-zA-Z])\^\{?\d+\}?", "", s)  # "5 cm^2" must not read as 2
    return s.strip().rstrip(".").strip()


def _value(token: str) -> float | None:
    clock = _CLOCK.fullmatch(token)
    if clock:
        return int(clock.group(1)) + int(clock.group(2)) / 60
    num, _, den = token.replace(",", "").partition("/")
    try:
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers(s: str) -> list[tuple[float, int]]:
    """All numbers in ``s`` with their offsets; a ``-`` right before one is a sign unless it follows a
    word or a digit."""
    found = []
    for m in _TOKEN.finditer(s):
        value = _value(m.group(0))
        if value is None:
            continue
        before = s[: m.start()].rstrip()
        if before.endswith("-"):  # "= -91" is negative, "65 - 156" is a subtraction
            prev = before[:-1].rstrip()[-1:]
            if not (prev.isalnum() or prev in (")", ".")):
                value = -value
        found.append((value, m.start()))
    return found


def numbers_equal(a: float, b: float) -> bool:
    """Integers compare exactly, others within a relative 1e-6.

    The tolerance absorbs float noise in decimals ("0.30000000000000004"); it must not make a
    teacher's 1,000,001 equal a gold of 1,000,000.
    """
    if a.is_integer() and b.is_integer():
        return a == b
    return math.isclose(a, b, rel_tol=NUMERIC_REL_TOL, abs_tol=1e-9)


def clean_number(text: str) -> float | None:
    """The value of ``text`` when it *is* a number ("$1,000.00", "18.", "1/2", "-3", "50%", "2:00 pm")."""
    s = _numeric_text(text).replace(" ", "")
    m = _CLEAN.fullmatch(s)
    if m:
        value = _value(m.group(2))
        return None if value is None else (-value if m.group(1) == "-" else value)
    clock = _CLOCK.fullmatch(s)
    return _value(clock.group(0)) if clock else None


def extract_final_number(text: str | None) -> float | None:
    """A numeric answer's value: the clean number, else the last number in the text ("18 dollars")."""
    if text is None:
        return None
    value = clean_number(text)
    if value is not None:
        return value
    s = _numeric_text(text)
    found = _numbers(s)
    if not found:
        return None
    value, start = found[-1]
    if _BOUND.search(s[:start]):  # "160 \leq d \leq 230" commits to no value, least of all 230
        return None
    return value


def _gold_number(gold: str) -> float | None:
    """A gold must be a clean number or hold exactly one number: "between 3 and 5" is rejected, not 5."""
    value = clean_number(gold)
    if value is None:
        found = _numbers(_numeric_text(gold))
        value = found[0][0] if len(found) == 1 else None
    return value if value is not None and math.isfinite(value) else None


# --- yes / no ---------------------------------------------------------------------------------------
_YES_NO = {"yes": True, "true": True, "no": False, "false": False}
_PREFIX = re.compile(
    r"^(?:(?:the|my|final|correct)\s+)*(?:answer|option|choice)\b\s*(?:is|would be)?\s*[:\-]?\s*", re.I
)


def _plain(text: str) -> str:
    """Un-boxed, \\text{} unwrapped, an "Answer:" prefix, quotes and trailing punctuation removed."""
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}", r"\1", _unbox(text)).replace("$", "")
    s = _PREFIX.sub("", s.strip())
    return s.strip().strip("\"'*`").strip().rstrip(".!;,").strip()


def parse_yes_no(text: str | None, *, strict: bool = False) -> bool | None:
    """True for yes/true, False for no/false; lenient mode also reads the first word ("Yes, because ...")."""
    if text is None:
        return None
    s = _plain(text).casefold()
    if s in _YES_NO:
        return _YES_NO[s]
    if strict:
        return None
    first = re.match(r"[a-z]+", s)
    return _YES_NO.get(first.group(0)) if first else None


# --- multiple choice --------------------------------------------------------------------------------
_LETTERED = re.compile(r"\s*\(?([A-Za-z])\s*[):.]\s*(.*)", re.S)
_LETTER = re.compile(r"\(?([A-Za-z])\)?(?:\s*[):.]\s*.*)?", re.S)


def _option_values(options: list[str]) -> tuple[list[str], bool]:
    """Each option's text, and whether the options are letter-prefixed (AQuA: ``'B)0.4167'``).

    Prefixed means every option starts with its own letter in order (A, B, C, ...), so a plain option
    that happens to start "a." is not mistaken for a label.
    """
    matches = [_LETTERED.fullmatch(o) for o in options]
    if matches and all(m and m.group(1).upper() == chr(65 + i) for i, m in enumerate(matches)):
        return [m.group(2).strip() for m in matches], True
    return [o.strip() for o in options], False


def _fold(text: str) -> str:
    """Option text for comparison: "At a laundry mat." matches the option 'at a laundry mat.'."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".!;,").strip().casefold()


def _is_int(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value == int(value)


def parse_choice(text: str | None, options: list[str] | None = None) -> int | str | None:
    """The chosen option as a 0-based index (with options), else ``"L:<letter>"``/``"N:<int>"``; None if unreadable.

    With options, in this order: a bare letter (``B``, ``(B)``, ``b``) is that option; for plain
    options (ECQA) an integer is a 1-based index; text equal to an option or its value
    (case-insensitive) picks it (AQuA's ``'s.5723'`` must not read as the letter S); a letter with
    text after it (``B) 0.4167``) is that letter; for letter-prefixed options (AQuA) a number is an
    option's *value*, never its position ("91" means the option ``B)91``). Without options letters
    and integers cannot be related, so they stay apart: ``B`` equals ``(b)`` but not ``2``.
    """
    if text is None:
        return None
    s = _plain(text)
    if not s:
        return None
    bare = re.fullmatch(r"\(?([A-Za-z])\)?", s)
    letter = bare or _LETTER.fullmatch(s)
    number = clean_number(s)
    if options is None:
        if letter:
            return f"L:{letter.group(1).upper()}"
        return f"N:{int(number)}" if _is_int(number) else None
    values, prefixed = _option_values(options)
    if bare:
        index = ord(bare.group(1).upper()) - 65
        return index if index < len(options) else None
    if not prefixed and number is not None:
        return int(number) - 1 if _is_int(number) and 1 <= number <= len(options) else None
    folded = _fold(s)
    for i, (option, value) in enumerate(zip(options, values, strict=True)):
        if folded in (_fold(option), _fold(value)):
            return i
    if letter:
        index = ord(letter.group(1).upper()) - 65
        return index if index < len(options) else None
    if number is not None:
        for i, value in enumerate(values):
            v = _gold_number(value)  # "$92", "Rs.1560", "60 m"; "62, 35" holds two numbers: no value
            if v is not None and numbers_equal(v, number):
                return i
    return None


# --- the families -----------------------------------------------------------------------------------
def infer_task(gold: str, options: list[str] | None) -> str:
    """The task family a record's gold implies: options -> MC; yes/no; a clean number; else math."""
    if options:
        return "multiple_choice"
    if parse_yes_no(gold, strict=True) is not None:
        return "yes_no"
    if clean_number(gold) is not None:
        return "numeric"
    return "math"


def _gold(task: str, gold: str, options: list[str] | None) -> bool | int | str | float:
    """The gold parsed for its family; raises GoldAnswerError naming the family and the value."""
    if task == "yes_no":
        value = parse_yes_no(gold, strict=True)
    elif task == "multiple_choice":
        value = parse_choice(gold, options or None)
    elif task == "numeric":
        value = _gold_number(gold)
    elif task == "math":
        g = _unbox(gold)
        # Not parsed here: math-verify reads nearly any text (prose as a product of symbols), so a
        # parse would reject nothing and cost the helper process a start per reader.
        value = g if readable(g) and g.replace("$", "").strip() else None
    else:
        raise ValueError(f"unknown task family {task!r}")
    if value is None:
        raise GoldAnswerError(f"{task} gold answer {gold!r} cannot be parsed for its family")
    return value


def check_gold(task: str, gold: str, options: list[str] | None = None) -> None:
    """Raise GoldAnswerError when ``gold`` cannot be graded against (readers call this per record)."""
    _gold(task, gold, options)


def grade_answer(task: str, answer: str | None, gold: str, options: list[str] | None = None) -> bool:
    """Whether ``answer`` is correct; False when it is None or unreadable, GoldAnswerError on a bad gold."""
    expected = _gold(task, gold, options)
    if answer is None or not answer.strip():
        return False
    if task == "yes_no":
        return parse_yes_no(answer) == expected
    if task == "multiple_choice":
        return parse_choice(answer, options or None) == expected
    if task == "numeric":
        value = extract_final_number(answer)
        return value is not None and numbers_equal(value, float(expected))
    return math_equal(_unbox(answer), str(expected))


def grade_mag(mag: MAG) -> MAG:
    """The completed MAG with every node labelled: MISSING without reasoning, else CORRECT/INCORRECT.

    Input labels are ignored and re-graded, so stale labels never survive; the one exception is a
    node labelled missing that has reasoning, a contradiction in the input, raised as ValueError.
    A response with reasoning but no answer is incorrect (the teacher answered nothing).
    """
    for i, r in enumerate(mag.responses):
        if r.label == Label.MISSING and r.reasoning is not None:
            raise ValueError(
                f"MAG {mag.id}: responses[{i}] (agent {r.agent!r}, round {r.round}) is labelled "
                "missing but has reasoning"
            )
    try:
        check_gold(mag.task, mag.gold_answer, mag.options)
    except GoldAnswerError as err:
        raise GoldAnswerError(f"MAG {mag.id}: {err}") from None
    completed = mag.completed()
    labelled: list[Response] = []
    for r in completed.responses:
        if r.reasoning is None:
            label = Label.MISSING
        elif grade_answer(mag.task, r.answer, mag.gold_answer, mag.options):
            label = Label.CORRECT
        else:
            label = Label.INCORRECT
        labelled.append(r.model_copy(update={"label": label}))
    return completed.model_copy(update={"responses": labelled})
