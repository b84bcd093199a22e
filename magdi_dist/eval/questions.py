"""Held-out questions for evaluation: public benchmark files or MAG files, as one flat list.

Every source becomes an ``EvalQuestion`` carrying exactly what training put in the prompt (question
text and options) and a gold answer in the same convention the teachers' answers use, so one grader
serves both: GSM8K numbers, StrategyQA ``yes``/``no``, ECQA and ARC 1-based option indices (as in the
MAGDi ECQA release), AQuA letters with the raw ``A)...`` options (as in the MAGDi AQuA release).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from magdi_dist.eval.errors import EvalInputError
from magdi_dist.mag.answers import GoldAnswerError, check_gold
from magdi_dist.mag.split import contamination_key

BENCHMARK_FORMATS = ("gsm8k", "strategyqa", "ecqa", "arc", "aqua")
FORMATS = (*BENCHMARK_FORMATS, "mag")
TASK_OF_FORMAT = {
    "gsm8k": "numeric",
    "strategyqa": "yes_no",
    "ecqa": "multiple_choice",
    "arc": "multiple_choice",
    "aqua": "multiple_choice",
}


class QuestionFileError(EvalInputError):
    """A data file that cannot be read as held-out questions (names the file and record)."""


@dataclass(frozen=True)
class EvalQuestion:
    index: int  # position in the evaluated list: the seed of its samples derives from it
    id: str
    task: str
    question: str
    gold: str
    options: list[str] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# --- detection ---------------------------------------------------------------------------------


def _first_record(text: str):
    """The first record of a JSON document (first element of a list) or of JSON lines."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("["):
        data = json.loads(stripped)
        return data[0] if data else None
    if stripped.startswith("{"):
        try:
            return json.loads(stripped.split("\n", 1)[0])
        except ValueError:
            return None  # a pretty-printed object (a debate file): not a benchmark
    return None


def detect_format(path: str | Path) -> str:
    """A benchmark format from the file's own fields; anything else is left to the MAG readers."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
        if {"q_text", "q_op1", "q_ans"} <= set(header):
            return "ecqa"
        raise QuestionFileError(f"{path}: CSV without q_text/q_op1..5/q_ans columns (not ECQA)")
    if path.suffix.lower() in (".pkl", ".pickle"):
        return "mag"
    rec = _first_record(path.read_text(encoding="utf-8-sig"))
    if not isinstance(rec, dict) or "responses" in rec or "gold_answer" in rec:
        return "mag"
    if "instruction" in rec and "answer" in rec and "Answer1:" in str(rec["instruction"]):
        return "arc"
    if {"question", "options", "correct"} <= rec.keys():
        return "aqua"
    if "question" in rec and isinstance(rec.get("answer"), bool):
        return "strategyqa"
    if "question" in rec and "####" in str(rec.get("answer", "")):
        return "gsm8k"
    return "mag"


# --- per-format parsing -------------------------------------------------------------------------


def _records(path: Path) -> list:
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        return json.loads(text)
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as err:
                raise QuestionFileError(f"{path}: line {lineno}: invalid JSON: {err}") from None
    return out


def _gsm8k(i: int, rec: dict) -> tuple:
    gold = str(rec["answer"]).rsplit("####", 1)[1].strip().replace(",", "")
    return f"gsm8k-{i}", rec["question"], gold, None


def _strategyqa(i: int, rec: dict) -> tuple:
    return str(rec.get("qid", f"strategyqa-{i}")), rec["question"], "yes" if rec["answer"] else "no", None


_ARC_PREFIX = "Please choose the correct answer to the question:"
_ARC_OPTION = re.compile(r"Answer(\d+):\s*(.*?)(?=\s*Answer\d+:|\Z)", re.S)


def _arc(i: int, rec: dict) -> tuple:
    text = str(rec["instruction"]).split("\n\nAnswer format:", 1)[0]
    question, _, choices = text.partition("\n\nAnswer1:")
    question = question.removeprefix(_ARC_PREFIX).strip()
    found = _ARC_OPTION.findall("Answer1:" + choices)
    if [int(n) for n, _ in found] != list(range(1, len(found) + 1)):
        raise ValueError(f"options are not numbered Answer1..AnswerN: {choices[:120]!r}")
    gold = str(rec["answer"]).strip().lower().removeprefix("answer")
    if not gold.isdigit() or not 1 <= int(gold) <= len(found):
        raise ValueError(f"answer {rec['answer']!r} is not one of answer1..answer{len(found)}")
    return f"arc-{i}", question, gold, [opt.strip() for _, opt in found]


def _aqua(i: int, rec: dict) -> tuple:
    return f"aqua-{i}", rec["question"], str(rec["correct"]).strip(), list(rec["options"])


def _ecqa(i: int, rec: dict) -> tuple:
    options = [rec[f"q_op{k}"] for k in range(1, 6)]
    if rec["q_ans"] not in options:
        raise ValueError(f"q_ans {rec['q_ans']!r} is not one of the options")
    return str(rec.get("q_no") or f"ecqa-{i}"), rec["q_text"], str(options.index(rec["q_ans"]) + 1), options


_PARSERS = {"gsm8k": _gsm8k, "strategyqa": _strategyqa, "arc": _arc, "aqua": _aqua, "ecqa": _ecqa}


def _benchmark(path: Path, fmt: str, task: str | None, limit: int | None) -> list[EvalQuestion]:
    if fmt == "ecqa":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            records = list(csv.DictReader(fh))
    else:
        records = _records(path)
    out = []
    for i, rec in enumerate(records[:limit] if limit is not None else records):
        try:
            qid, question, gold, options = _PARSERS[fmt](i, rec)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise QuestionFileError(f"{path}: record {i} ({fmt}): {type(err).__name__}: {err}") from None
        q = EvalQuestion(len(out), qid, task or TASK_OF_FORMAT[fmt], question, gold, options)
        try:  # a gold the grader cannot read fails here, not after the whole generation run
            check_gold(q.task, q.gold, q.options)
        except GoldAnswerError as err:
            raise QuestionFileError(f"{path}: record {i} ({fmt}): {err}") from None
        out.append(q)
    return out


def _from_mags(path: Path, task: str | None, limit: int | None) -> list[EvalQuestion]:
    from magdi_dist.mag.readers import read_mags

    mags = read_mags([path], task=task).mags
    out = []
    for mag in mags[:limit] if limit is not None else mags:
        if not mag.question:  # a ReConcile pickle without its question text cannot be asked
            raise QuestionFileError(f"{path}: MAG {mag.id} has no question text to evaluate on")
        out.append(EvalQuestion(len(out), mag.id, mag.task, mag.question, mag.gold_answer, mag.options))
    return out


def load_questions(
    path: str | Path, *, format: str | None = None, task: str | None = None, limit: int | None = None,
    exclude: Sequence[str | Path] = (),
) -> tuple[list[EvalQuestion], str]:
    """The first ``limit`` questions of ``path`` and the format they were read as. Questions that
    appear in any MAG file of ``exclude`` (teacher discussions a student trained on) are dropped first,
    so ``limit`` counts clean questions; see ``excluded_keys``."""
    path = Path(path)
    if not path.is_file():
        raise QuestionFileError(f"no such data file: {path}")
    if format is not None and format not in FORMATS:
        raise QuestionFileError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    fmt = format or detect_format(path)
    cut = None if exclude else limit
    questions = _from_mags(path, task, cut) if fmt == "mag" else _benchmark(path, fmt, task, cut)
    if exclude:
        seen = excluded_keys(exclude)
        questions = [q for q in questions if contamination_key(q.question) not in seen][:limit]
    if not questions:
        raise QuestionFileError(f"{path}: no questions to evaluate")
    return questions, fmt


def excluded_keys(paths: Sequence[str | Path]) -> set[str]:
    """The contamination keys (``mag.split.contamination_key``: case, punctuation and whitespace do not
    count) of every question in these MAG files. Every record must be readable and carry its question
    text: one that cannot be read could still be a question a student trained on."""
    from magdi_dist.mag.readers import read_mags

    keys: set[str] = set()
    for p in paths:
        if not Path(p).is_file():
            raise QuestionFileError(f"no such MAG file to exclude: {p}")
        result = read_mags([p], strict=False)
        if result.rejected:
            first = result.rejected[0]
            raise QuestionFileError(f"{p}: {len(result.rejected)} records cannot be read (first: record "
                                    f"{first.get('record')}, {first.get('reason')}), so their questions "
                                    "cannot be excluded; fix or drop the file (magdi-dist inspect)")
        textless = [m.id for m in result.mags if not m.question]
        if textless:
            raise QuestionFileError(f"{p}: MAG {textless[0]} (and {len(textless) - 1} more) has no "
                                    "question text, so it cannot be matched against the benchmark")
        keys |= {contamination_key(m.question) for m in result.mags}
    return keys
