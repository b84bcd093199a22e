"""Contamination excluded by construction: a student is never evaluated on a question it was trained on.

An export records its training questions (data.shards.TRAINING_QUESTIONS: the contamination keys,
``mag.split.contamination_key``, of every question of its shards' manifest that the split did not hold
out). Evaluation drops every question of its data whose key is among them and reports how many
(``contamination_excluded``); ``allow_contaminated`` keeps them, with a warning, and reports how many it
kept (``contaminated``). MAG files given as ``exclude`` drop their questions too (``excluded``).

Which model records what: a MAGDi export (it has graph_encoder.json) without the file was trained
before exports recorded their questions, so it cannot be checked and is refused unless contamination is
allowed; a plain Hugging Face directory (a model this project did not train) has no training questions
of ours to drop.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from magdi_dist.data.shards import TRAINING_QUESTIONS
from magdi_dist.eval.errors import EvalInputError
from magdi_dist.eval.questions import EvalQuestion, excluded_keys
from magdi_dist.mag.split import CONTAMINATION_RULE, contamination_key

MAGDI_EXPORT_MARKER = "graph_encoder.json"  # written by every MAGDi export (train/export.py)


class ContaminationError(EvalInputError):
    """Training questions cannot be told apart from evaluation questions, or were evaluated anyway."""


def training_keys(model_dir: str | Path) -> frozenset[str] | None:
    """The contamination keys of the questions the student in ``model_dir`` was trained on, or None
    for a model this project did not train (see the module docstring)."""
    model_dir = Path(model_dir)
    path = model_dir / TRAINING_QUESTIONS
    if not path.is_file():
        if (model_dir / MAGDI_EXPORT_MARKER).is_file():
            raise ContaminationError(
                f"{model_dir} is a MAGDi export that records no training questions ({TRAINING_QUESTIONS}: "
                "trained on shards from before they were recorded), so its training questions cannot be "
                "dropped; re-run preprocessing and training, or give --allow-contaminated")
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("rule") != CONTAMINATION_RULE:
        raise ContaminationError(f"{path}: keys made by the rule {record.get('rule')!r}, this code's rule is "
                                 f"{CONTAMINATION_RULE!r}; re-run preprocessing and training")
    return frozenset(record["keys"])


@dataclass(frozen=True)
class Exclusion:
    """Which questions an evaluation may not ask: decided once, before any question is asked."""

    trained: frozenset[str] | None  # the student's training questions; None: it records none
    extra: frozenset[str]  # the questions of the ``exclude`` MAG files
    allow_contaminated: bool = False

    def digest(self) -> str:
        """What reuse of a finished evaluation compares: the excluded keys, not the files they came from."""
        body = {"trained": sorted(self.trained) if self.trained is not None else None,
                "extra": sorted(self.extra), "allow_contaminated": self.allow_contaminated}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def exclusion(model_dir: str | Path, exclude: Sequence[str | Path] = (), *,
              allow_contaminated: bool = False) -> Exclusion:
    trained = None
    try:
        trained = training_keys(model_dir)
    except ContaminationError:
        if not allow_contaminated:
            raise
    return Exclusion(trained, frozenset(excluded_keys(exclude)) if exclude else frozenset(), allow_contaminated)


def select(questions: list[EvalQuestion], ex: Exclusion, limit: int | None) -> tuple[list[EvalQuestion], dict]:
    """The first ``limit`` questions that may be asked, and the counts the summary reports: the data's
    questions dropped (over all of ``questions``, whatever the limit: how much of the data was off
    limits) and, with ``allow_contaminated``, the asked ones the student was trained on."""
    kept, trained, extra, seen = [], 0, 0, []
    for q in questions:
        key = contamination_key(q.question)
        mine = ex.trained is not None and key in ex.trained
        if mine and not ex.allow_contaminated:  # counted first: a trained question also in an exclude file
            trained += 1
        elif key in ex.extra:
            extra += 1
        else:
            kept.append(q)
            seen.append(mine)
    kept, contaminated = (kept[:limit], sum(seen[:limit])) if limit is not None else (kept, sum(seen))
    counts = {"contamination_excluded": trained, "contaminated": contaminated, "excluded": extra,
              "training_questions": len(ex.trained) if ex.trained is not None else None,
              "exclusion_sha256": ex.digest(), "allow_contaminated": ex.allow_contaminated}
    return kept, counts


def warn_contaminated(counts: dict, total: int) -> None:
    """The warning ``allow_contaminated`` owes its user (``counts``: ``select``'s)."""
    if not counts["allow_contaminated"]:
        return
    if counts["training_questions"] is None:
        warnings.warn("--allow-contaminated: the student records no training questions, so none were "
                      "checked", stacklevel=2)
    else:
        warnings.warn(f"--allow-contaminated: {counts['contaminated']} of the {total} questions are ones the "
                      "student was trained on, and they are evaluated (summary: contaminated)", stacklevel=2)


def check_evaluated(questions: list[EvalQuestion], ex: Exclusion, limit: int | None,
                    predictions: Sequence[dict]) -> None:
    """That an evaluation's predictions are exactly its data minus its excluded questions (cut to
    ``limit``): what a study checks of every cell, fresh or reused."""
    expected, _ = select(questions, ex, limit)
    asked = [r["id"] for r in predictions]
    if asked != [q.id for q in expected]:
        extra = sorted(set(asked) - {q.id for q in expected})
        missing = sorted({q.id for q in expected} - set(asked))
        raise ContaminationError(f"the evaluation asked {len(asked)} questions, its data minus the excluded "
                                 f"ones is {len(expected)}: asked but excluded {extra[:5]}, not asked "
                                 f"{missing[:5]}")
    if not ex.allow_contaminated and ex.trained is not None:
        seen = [r["id"] for r in predictions if contamination_key(r["question"]) in ex.trained]
        if seen:
            raise ContaminationError(f"questions the student was trained on were evaluated: {seen[:5]}")
