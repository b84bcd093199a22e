"""Chain cleaning: drop the sentences of a teacher's reasoning that talk about the discussion instead
of the problem ("Based on the other agents' solutions ...", "I agree with agent 2", "my previous
answer was wrong").

Why: from round 1 on, teachers read their peers and say so. Trained on as they are, such chains teach
a student to invent peers that do not exist at test time. The MAGDi reference strips agreement
sentences before training for the same reason. Cleaning is sentence-level and conservative: a
sentence that states the final answer (it holds the answer and "answer" or a ``\\boxed``; the last
boxed one and the last worded one) is always kept, and a chain that would lose every sentence keeps
its last one. The same cleaned text feeds the NTP target, the negative chain and the node's frozen
feature, since all are built from the MAG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from magdi_dist.mag.schema import MAG

# Case-insensitive, searched in each sentence. Written against the shared real transcripts (Du et
# al.'s debate runs, ReConcile / MAGDi GPT-4o runs) and the phrasing debate prompts elicit.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"\bagents?\b",  # "the other agents", "one of the agents", "agent 2's solution"
    r"\b(other|previous|fellow|their|everyone's)\s+(solutions?|responses?|answers?|reasoning|opinions?|"
    r"explanations?|calculations?|approaches?)\b",
    r"\bI\s+(?:also\s+|fully\s+|completely\s+|now\s+|still\s+|would\s+)?(?:agree|disagree|concur)\b",
    r"\b(?:agree|agrees|agreed|disagree|consensus)\s+with\b",
    r"\bmy\s+(?:previous|original|earlier|initial|first)\s+(?:answer|solution|response|reasoning)\b",
    r"\b(?:based on|given|considering|in light of|after reviewing|upon reviewing|taking into account|"
    r"looking at)\b[^.]*\b(?:solutions?|responses?|answers?|feedback|opinions?)\b[^.]*\b(?:provided|given|"
    r"above|others?|previous)\b",
    r"\bI (?:keep|stick with|maintain|stand by|change|update|revise) my (?:answer|solution|response)\b",
)

_SENTENCE = re.compile(r".*?(?:[.!?](?=\s|$)|\n|$)\s*", re.S)
_ANSWER_MARK = re.compile(r"answer|\\boxed", re.I)


@lru_cache(maxsize=16)
def compile_patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(p, re.I) for p in patterns)


def split_sentences(text: str) -> list[str]:
    """Sentences with their trailing whitespace, so ``"".join`` gives ``text`` back exactly. A full
    stop inside a number ("3.5") does not end a sentence; a newline does."""
    return [s for s in _SENTENCE.findall(text) if s]


def clean_reasoning(text: str, answer: str | None, patterns: tuple[str, ...] = DEFAULT_PATTERNS) -> str:
    pieces = split_sentences(text)
    rx = compile_patterns(tuple(patterns))
    protect: dict[str, int] = {}  # the last \boxed statement of the answer, and the last worded one
    if answer is not None and str(answer).strip():
        for i, piece in enumerate(pieces):
            if str(answer).strip() in piece and _ANSWER_MARK.search(piece):
                protect["boxed" if "\\boxed" in piece else "worded"] = i
    keep = set(protect.values())
    kept = [p for i, p in enumerate(pieces) if i in keep or not any(r.search(p) for r in rx)]
    cleaned = "".join(kept).strip()
    if not cleaned:  # every sentence referred to the discussion: keep the conclusion
        cleaned = next((p.strip() for p in reversed(pieces) if p.strip()), text.strip())
    return cleaned


@dataclass
class CleanStats:
    chains: int = 0
    """Non-missing responses seen."""
    changed: int = 0
    """Responses whose reasoning was changed."""
    chars_removed: int = 0

    def add(self, other: CleanStats) -> None:
        self.chains += other.chains
        self.changed += other.changed
        self.chars_removed += other.chars_removed

    def as_dict(self) -> dict:
        return {"chains": self.chains, "changed": self.changed, "chars_removed": self.chars_removed}


def clean_mag(mag: MAG, patterns: tuple[str, ...] = DEFAULT_PATTERNS) -> tuple[MAG, CleanStats]:
    """``mag`` with every response's reasoning cleaned (labels and answers untouched)."""
    stats = CleanStats()
    responses = []
    for r in mag.responses:
        if r.reasoning is None:
            responses.append(r)
            continue
        stats.chains += 1
        cleaned = clean_reasoning(r.reasoning, r.answer, patterns)
        if cleaned != r.reasoning:
            stats.changed += 1
            stats.chars_removed += len(r.reasoning) - len(cleaned)
            r = r.model_copy(update={"reasoning": cleaned})
        responses.append(r)
    if not stats.changed:
        return mag, stats
    return mag.model_copy(update={"responses": responses}), stats
