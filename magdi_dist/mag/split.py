"""Which questions are held out: a pure function of the question and the split settings.

A question is keyed by its text with whitespace collapsed (``question_key``), not by a record id: the
shared GSM8K teacher files are several discussions of the same questions, and a question must be
held out from all of them or from none. It is held out when a seeded hash of its key, read as a
number in [0, 1), falls below the held-out fraction (``is_heldout``).

Why a hash threshold and not "shuffle, take the first 10%": the decision for one question never
depends on the other questions, so it can be taken anywhere (the parse stage, the tokenizer trainer,
the manifest) with the same result, and adding an input file never moves a question between train
and held-out, which keeps the per-file preprocessing incremental. The cost is that the held-out share
is binomial around the fraction rather than exact; the manifest records the counts.

Contamination (a student evaluated on a question it was trained on) is keyed more loosely, by
``contamination_key``; the manifest records those keys of its training questions (``training_questions``)
and the export copies them, so evaluation drops them by construction.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

SPLIT_RULE = "sha256(f'{seed}:{question_key}') / 2**256 < eval_fraction"
CONTAMINATION_RULE = "sha256(NFKC, lower case, punctuation as space, whitespace collapsed)[:16]"


def question_key(question: str) -> str:
    """16 hex digits identifying a question by its whitespace-normalised text."""
    return hashlib.sha256(" ".join(question.split()).encode()).hexdigest()[:16]


def normalize_question(text: str) -> str:
    """Case, Unicode form, punctuation and whitespace do not make a different question."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def contamination_key(question: str) -> str:
    """16 hex digits identifying a question for contamination: the normalised text of
    ``normalize_question``, so a benchmark's copy that differs in case or punctuation is still caught.

    A key of its own, not ``question_key``: the split's key is the hash of the exact (whitespace-
    normalised) text, and changing it would move questions between training and held-out in every
    existing manifest. Contamination wants the looser match; the split keeps its own."""
    return hashlib.sha256(normalize_question(question).encode()).hexdigest()[:16]


def is_heldout(key: str, eval_fraction: float, seed: int) -> bool:
    if eval_fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest, "big") / 2**256 < eval_fraction


def split_summary(keys, eval_fraction: float, seed: int) -> dict:
    """The manifest's ``split`` entry over a set of question keys: rule, settings, counts, and the
    held-out keys (sorted, so the manifest's bytes do not depend on input order)."""
    unique = sorted(set(keys))
    held = [k for k in unique if is_heldout(k, eval_fraction, seed)]
    return {"rule": SPLIT_RULE, "eval_fraction": eval_fraction, "seed": seed,
            "questions": len(unique), "heldout_questions": len(held), "heldout": held}


def training_questions(contamination: dict[str, str], eval_fraction: float, seed: int) -> dict:
    """The manifest's ``training_questions`` entry: the contamination keys of every question the split
    does not hold out (``contamination``: split key -> contamination key), sorted. What an export
    records, so evaluation can drop exactly the questions a student was trained on."""
    keys = sorted({c for k, c in contamination.items() if not is_heldout(k, eval_fraction, seed)})
    return {"rule": CONTAMINATION_RULE, "questions": len(keys), "keys": keys}
