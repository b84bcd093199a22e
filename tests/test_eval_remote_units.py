"""Remote evaluation's pieces without a server: its options, the text-completion reply parser, and the
client-side stop rule, which must cut a reply exactly where local generation's StopAtAnswer stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from magdi_dist.data.prompt import truncate_answer
from magdi_dist.eval.config import EndpointLimits, EvalConfig
from magdi_dist.eval.endpoint import BadReply, parse_reply
from magdi_dist.eval.generate import StopAtAnswer
from magdi_dist.eval.remote import sample_generation


def test_remote_options_are_checked_when_the_config_loads():
    base = {"model": "m", "data": "d.jsonl"}
    cfg = EvalConfig(**base, base_url=["http://a:1/v1", "http://b:2/v1"], max_concurrency=7, timeout_s=9)
    assert cfg.remote and cfg.limits == EndpointLimits(max_concurrency=7, timeout_s=9)
    with pytest.raises(ValidationError, match="with base_url the endpoints do the work"):
        EvalConfig(**base, base_url=["http://a:1/v1"], workers=2)
    with pytest.raises(ValidationError, match="not an http"):
        EvalConfig(**base, base_url=["a:1/v1"])
    with pytest.raises(ValidationError, match="extra_body must be a JSON object"):
        EvalConfig(**base, extra_body="[1]")
    with pytest.raises(ValidationError, match="extra_body"):
        EvalConfig(**base, extra_body="{not json")


def test_a_text_completion_reply_is_read_from_choices_text():
    body = {"choices": [{"text": " 4. The answer is 4.", "finish_reason": "stop"}], "model": "m",
            "usage": {"prompt_tokens": 9, "completion_tokens": 8}}
    got = parse_reply(json.dumps(body).encode(), kind="completion")
    assert (got["content"], got["finish_reason"], got["usage"]) == (" 4. The answer is 4.", "stop",
                                                                    {"prompt_tokens": 9, "completion_tokens": 8})
    with pytest.raises(BadReply, match=r"no choices\[0\]\.text"):
        parse_reply(json.dumps({"choices": [{"message": {"content": "x"}}]}).encode(), kind="completion")
    with pytest.raises(BadReply, match=r"choices\[0\]\.message"):  # a chat reply is not read as text
        parse_reply(json.dumps(body).encode(), kind="chat")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from magdi_dist.model.sources import checkpoint_dir

    return AutoTokenizer.from_pretrained(Path(checkpoint_dir("smollm2-135m-instruct")))


@pytest.mark.parametrize(("text", "kept"), [
    ("So 3 + 4 = 7. The answer is 7. Question: what is 8?", "So 3 + 4 = 7. The answer is 7."),
    ("3 + 4 = 7\nThe answer is: 7\nmore", "3 + 4 = 7\nThe answer is: 7"),  # a line break ends it
    ("The answer is 3.5. Then", "The answer is 3.5."),  # "3.5." is the number 3.5 and a full stop
    ("no statement at all, just text", "no statement at all, just text"),  # never ends: all kept
    ("so 5\nQuestion: invented", "so 5"),  # an invented next question ends it
])
def test_a_reply_is_cut_where_local_generation_stops(tokenizer, text, kept):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # Local generation: StopAtAnswer sees the sequence grow a token at a time.
    stop = StopAtAnswer(tokenizer, prompt_len=0, rows=1)
    for t in range(1, len(ids) + 1):
        if bool(stop(torch.tensor([ids[:t]]), None)[0]):
            break
    n = stop.stopped_at[0] if stop.stopped_at[0] is not None else len(ids)
    got = sample_generation(tokenizer, text)
    assert (got.text, got.tokens) == (kept, n)
    assert got.text == truncate_answer(tokenizer.decode(ids[:n], skip_special_tokens=True))
