"""One evaluation worker: a loaded student that turns a batch of questions into per-question records.

The same class runs in-process and inside each Ray actor, so a sharded run executes exactly the code
of a single-process run on exactly the same batches.
"""

from __future__ import annotations

import time

from magdi_dist.eval.config import DecodeSettings
from magdi_dist.eval.generate import Generation, generate, sample_seed
from magdi_dist.eval.loader import StudentDirs, load_student, resolve
from magdi_dist.eval.questions import EvalQuestion
from magdi_dist.mag.answers import extract_answer, is_correct, majority_vote


def prompt_for(q: EvalQuestion, tokenizer) -> str:
    from magdi_dist.data.prompt import render_prompt  # the training prompt, never a copy of it

    return render_prompt(tokenizer, q.question, q.options)


class Engine:
    def __init__(self, model, tokenizer, settings: DecodeSettings) -> None:
        self.model, self.tokenizer, self.settings = model, tokenizer, settings

    @classmethod
    def load(cls, ref: str, dirs: StudentDirs | None, settings: DecodeSettings, tracking_uri: str | None = None):
        """Load from the driver's resolved directories when this process can see them (same machine or
        shared storage), else resolve ``ref`` again here (a remote worker downloads its own copy)."""
        if dirs is None or not (dirs.model.is_dir() and dirs.tokenizer.is_dir()):
            dirs = resolve(ref, tracking_uri=tracking_uri)
        model, tokenizer = load_student(dirs)
        return cls(model, tokenizer, settings)

    def run_batch(self, questions: list[EvalQuestion]) -> list[dict]:
        """Records for ``questions``: all k samples of all questions in one generate call."""
        s = self.settings
        prompts = [prompt_for(q, self.tokenizer) for q in questions for _ in range(s.k)]
        seeds = [sample_seed(s.seed, q.index, j) for q in questions for j in range(s.k)]
        start = time.perf_counter()
        gens = generate(
            self.model, self.tokenizer, prompts, seeds, temperature=s.temperature, max_new_tokens=s.max_new_tokens
        )
        # Questions of a batch finish together: each is charged an equal share of the batch's time.
        latency = (time.perf_counter() - start) / len(questions)
        return [question_record(q, gens[i * s.k : (i + 1) * s.k], latency) for i, q in enumerate(questions)]


def question_record(q: EvalQuestion, samples: list[Generation], latency_s: float) -> dict:
    """One line of predictions.jsonl: the question, its samples read and voted, graded (local and
    remote generation alike)."""
    answers = [extract_answer(g.text) for g in samples]
    vote = majority_vote(q.task, answers, q.options)
    return {
        "index": q.index,
        "id": q.id,
        "task": q.task,
        "question": q.question,
        "options": q.options,
        "gold": q.gold,
        "samples": [g.text for g in samples],
        "answers": answers,
        "sample_tokens": [g.tokens for g in samples],
        "vote": vote.answer,
        "vote_count": vote.count,
        "correct": is_correct(q.task, vote.answer, q.gold, q.options),
        "generated_tokens": sum(g.tokens for g in samples),
        "latency_s": latency_s,
    }
