"""Batched, left-padded generation where every row samples from its own seeded generator.

Hugging Face sampling draws the whole batch from one RNG, so a row's tokens would depend on which
other rows share its batch, and a sharded run would not reproduce a single-process run. Instead a
logits processor draws each row's token with that row's ``torch.Generator`` (seeded from
(seed, question index, sample index)) and leaves only that token possible; generation itself stays
greedy, so Hugging Face still handles the KV cache, left-padding positions and stopping.

A row stops at its end-of-sequence token, or once its text holds the end of its first answer
statement or the start of an invented next question (``data.prompt.answer_end``, per row, so a row's
output never depends on its batch mates); its text is cut there and its token count is what it
generated up to that point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from magdi_dist.data.prompt import answer_end, truncate_answer


def sample_seed(seed: int, index: int, sample: int) -> int:
    """A 64-bit seed that depends only on (run seed, question index, sample index)."""
    return int(np.random.SeedSequence([seed, index, sample]).generate_state(1, dtype=np.uint64)[0])


class PerRowSampler(LogitsProcessor):
    """Temperature sampling, one generator per row; the output is a one-hot of the drawn token."""

    def __init__(self, seeds: list[int], temperature: float) -> None:
        if temperature <= 0:
            raise ValueError("sampling needs temperature > 0 (temperature 0 is greedy decoding)")
        self.seeds = seeds
        self.temperature = temperature
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:  # created lazily: a generator must live on the scores' device
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        # Every row draws at every step, finished or not, so a row's stream never depends on others.
        picks = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, picks.unsqueeze(1), 0.0)
        return out


class StopAtAnswer(StoppingCriteria):
    """Per row: done once the generated text (after ``prompt_len``) holds a finished answer. Records
    how many tokens each row had generated when it finished."""

    def __init__(self, tokenizer, prompt_len: int, rows: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stopped_at: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        done = []
        for i, text in enumerate(texts):
            if self.stopped_at[i] is None and answer_end(text) is not None:
                self.stopped_at[i] = new.shape[1]
            done.append(self.stopped_at[i] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # generated tokens before the end-of-sequence token (what the answer costs)


def kept(tokenizer, ids: list[int], stopped: int | None) -> Generation:
    """What a sample keeps of its generated tokens ``ids`` (up to, not including, eos): the first
    ``stopped`` of them when the answer ended there (StopAtAnswer, ``answer_stop``), its text cut at
    the answer's end. Local and remote generation both end here."""
    n = min(len(ids), stopped) if stopped is not None else len(ids)
    return Generation(truncate_answer(tokenizer.decode(ids[:n], skip_special_tokens=True)), n)


def answer_stop(tokenizer, ids: list[int]) -> int | None:
    """StopAtAnswer's rule on a finished sequence: the first token count at which the decoded text
    holds the end of an answer (None: it never does). For text that came back from a server."""
    for t in range(1, len(ids) + 1):
        if answer_end(tokenizer.decode(ids[:t], skip_special_tokens=True)) is not None:
            return t
    return None


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids exactly as training has them: data/encode.py's ``encode_chain`` with an
    empty target yields prompt ids + eos, so dropping that eos leaves the training prompt (bos and
    all), and any future change to the training rule reaches evaluation too."""
    from magdi_dist.data.encode import encode_chain

    ids, _ = encode_chain(tokenizer, prompt, "", max_length=1 << 62)
    return ids[:-1]


def encode_prompts(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded batch: every prompt ends in the last column, where generation continues."""
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, width - len(r) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    seeds: list[int],
    *,
    temperature: float,
    max_new_tokens: int,
) -> list[Generation]:
    """One generation per prompt: greedy when ``temperature`` is 0, else seeded sampling."""
    enc = {k: v.to(model.device) for k, v in encode_prompts(tokenizer, prompts).items()}
    processors = LogitsProcessorList([PerRowSampler(seeds, temperature)] if temperature > 0 else [])
    prompt_len = enc["input_ids"].shape[1]
    stop = StopAtAnswer(tokenizer, prompt_len, len(prompts))
    eos = model.generation_config.eos_token_id
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        logits_processor=processors,
        stopping_criteria=StoppingCriteriaList([stop]),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    new = out[:, prompt_len:].cpu()
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    results = []
    for row, stopped in zip(new.tolist(), stop.stopped_at, strict=True):
        n = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
        results.append(kept(tokenizer, row[:n], stopped))
    return results
