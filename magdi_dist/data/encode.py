"""Token ids of one node's text (prompt + chain + eos), shared by training rows and node features.

One function for both so that a node's frozen feature and the live embedding of the row carrying the
same chain are computed from identical token ids.
"""

from __future__ import annotations

from magdi_dist.data.prompt import format_target, prompt_adds_special_tokens, render_prompt
from magdi_dist.mag.answers import ANSWER_PREFIX
from magdi_dist.mag.schema import MAG

IGNORE_INDEX = -100


def node_parts(mag: MAG, node: int, tokenizer) -> tuple[str, str] | None:
    """(prompt, target) of node ``node`` of a MAG for ``tokenizer`` (data/prompt.py), None for a
    missing node."""
    resp = mag.responses[node]
    if resp.reasoning is None:
        return None
    return render_prompt(tokenizer, mag.question, mag.options), format_target(resp.reasoning, resp.answer)


def encode_chain(
    tokenizer, prompt: str, target: str, max_length: int, answer_only: bool = False
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + target + eos, right-truncated to ``max_length`` tokens.

    The prompt (``render_prompt``'s text) is tokenized on its own, with the tokenizer's special tokens
    unless a chat template wrote them (``prompt_adds_special_tokens``), exactly as evaluation does; the
    target without special tokens, then eos. Labels are -100 on the prompt, and with ``answer_only``
    also on the reasoning (only the tokens of the final "The answer is X." sentence and eos are
    targets). Truncation keeps the prompt and cuts the end of the chain, so a row that does not fit
    loses its answer but never its question.
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=prompt_adds_special_tokens(tokenizer))["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; a chain must end with one")
    # Tokenizers configured with add_eos_token (the reference's Mistral setup) would end the prompt.
    if prompt_ids and prompt_ids[-1] == eos and eos != tokenizer.bos_token_id:
        prompt_ids = prompt_ids[:-1]
    enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=answer_only)
    target_ids = list(enc["input_ids"]) + [eos]
    target_labels = list(target_ids)
    if answer_only:
        start = target.rfind(ANSWER_PREFIX)
        for k, (_, end) in enumerate(enc["offset_mapping"]):
            if start < 0 or end <= start:  # a token overlapping the answer sentence stays a target
                target_labels[k] = IGNORE_INDEX
    ids = (prompt_ids + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + target_labels)[:max_length]
    return ids, labels
