"""The text a training row and an evaluation prompt are made of. Training and evaluation must agree.

A row is ``render_prompt(tokenizer, question, options)`` followed by ``format_target(reasoning,
answer)`` and the tokenizer's eos token (appended as a token id by data/encode.py, never as text, so it
cannot be split by a tokenizer that does not know its string). Evaluation feeds ``render_prompt`` alone
and parses the generated "The answer is ..." sentence (the statement itself, written and read, is
magdi_dist.mag.answers': one rule for both sides).

The prompt follows the tokenizer: a tokenizer with a chat template (an instruct student) gets the
question as the user's turn of its template, opened for the assistant's reply, which the chain then
is (its eos, e.g. ``<|im_end|>``, closes the turn as the template would); a tokenizer without one (tiny
students, base models) gets the plain ``Question: ... Answer: `` text. Being a function of the
tokenizer alone, the choice is the same in training, frozen features, evaluation and the registered
model, which all load the same tokenizer files.

This module imports nothing but the standard library and magdi_dist.mag.answers (itself light: see
there): the registered pyfunc model loads it by path, in a serving environment without the training
stack.
"""

from __future__ import annotations

import re
import string

# answer_sentence is also data's public name for the target's last sentence (data/__init__).
from magdi_dist.mag.answers import STATEMENT_END, answer_sentence

# An option that already carries its label ("A) ...", "(b) ...", "3. ...") is shown as given.
_LABELLED = re.compile(r"^\s*\(?[A-Za-z0-9]{1,2}[\).:]\s")


def format_options(options: list[str]) -> str:
    """"A) first B) second ..." (letters added unless every option is already labelled)."""
    if all(_LABELLED.match(o) for o in options):
        return " ".join(o.strip() for o in options)
    letters = string.ascii_uppercase
    return " ".join(f"{letters[i]}) {o.strip()}" for i, o in enumerate(options))


def format_prompt(question: str | None, options: list[str] | None = None) -> str:
    """'Question: ...\\nOptions: A) ... B) ...\\nAnswer: ' (no Options line without options).

    ``question`` may be None (ReConcile pickles carry no question text): the line stays, empty.
    """
    lines = [f"Question: {(question or '').strip()}"]
    if options:
        lines.append(f"Options: {format_options(options)}")
    lines.append("Answer: ")
    return "\n".join(lines)


# Instruct students are told the answer format training teaches, so an untrained one can be graded.
CHAT_INSTRUCTION = 'Solve it step by step, then end with "The answer is <answer>."'


def uses_chat_template(tokenizer) -> bool:
    """Whether prompts for this tokenizer go through its chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, question: str | None, options: list[str] | None = None) -> str:
    """The prompt text exactly as the student reads it (see the module docstring); tokenize it with
    ``add_special_tokens=prompt_adds_special_tokens(tokenizer)``."""
    if not uses_chat_template(tokenizer):
        return format_prompt(question, options)
    return tokenizer.apply_chat_template(chat_messages(question, options), tokenize=False,
                                         add_generation_prompt=True)


def chat_messages(question: str | None, options: list[str] | None = None) -> list[dict]:
    """The conversation an instruct student's prompt is the chat template of (``render_prompt``); an
    OpenAI-compatible chat endpoint given these messages applies the same template to them."""
    lines = [f"Question: {(question or '').strip()}"]
    if options:
        lines.append(f"Options: {format_options(options)}")
    lines.append(CHAT_INSTRUCTION)
    return [{"role": "user", "content": "\n".join(lines)}]


def prompt_adds_special_tokens(tokenizer) -> bool:
    """A chat template writes its own special tokens (bos included where the model wants one); a plain
    prompt gets the tokenizer's (bos, like Llama)."""
    return not uses_chat_template(tokenizer)


def format_target(reasoning: str, answer: str | None) -> str:
    """'<reasoning> The answer is <answer>.' (the answer sentence is omitted when there is no answer)."""
    text = reasoning.strip()
    if answer is not None and str(answer).strip():
        text = f"{text} {answer_sentence(answer)}"
    return text


_NEXT_QUESTION = re.compile(r"\n\s*Question:|(?<=\S)\s+Question:")


def answer_end(text: str) -> int | None:
    """Where a generation's answer is over (an index into ``text``), or None while it is not: just
    after the first complete "The answer is X." statement, or just before a next "Question:" that
    the model started to invent, whichever comes first."""
    ends = []
    if m := STATEMENT_END.search(text):
        ends.append(m.end())
    if m := _NEXT_QUESTION.search(text):
        ends.append(m.start())
    return min(ends) if ends else None


def truncate_answer(text: str) -> str:
    """``text`` up to ``answer_end`` (whole when the answer never ended)."""
    end = answer_end(text)
    return (text if end is None else text[:end]).strip()
