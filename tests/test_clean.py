"""Chain cleaning: sentences about the discussion go, the problem and the answer stay. On every
shared real teacher file, and through preprocessing into the rows a student trains on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from magdi_dist.mag.clean import DEFAULT_PATTERNS, clean_mag, clean_reasoning, split_sentences
from magdi_dist.mag.grading import extract_boxed
from magdi_dist.mag.readers import read_mags

REAL_FILES = [f"debate_du/{n}" for n in ("gsm_3_2_100.json", "gsm_3_3_top100.json",
                                         "gsm_llama32_3b_agents3_rounds3.json",
                                         "gsm_v4_stateful_3_4_top_100_majority_error.json")] + \
             [f"magdi_layout/{t}_gpt4o_round_2.json" for t in ("Aqua", "ECQA", "GSM8k", "SQA")] + \
             [f"reconcile_pickle/{t}_round_2.pkl" for t in ("Aqua", "ECQA", "GSM8k", "SQA")]
# Written independently of the patterns: phrases that only make sense with peers in the room.
PEER_PHRASES = ("other agent", "the agents", "one of the agents", "other solutions", "previous solutions",
                "i agree with", "i disagree with", "my previous answer", "my original answer")


@pytest.mark.parametrize(("text", "answer", "want"), [
    ("Based on the other agents' solutions, I recheck. 3 + 4 = 7. The answer is 7.", "7",
     "3 + 4 = 7. The answer is 7."),
    ("I agree with agent 2.\nHe pays 2.5 dollars per pen, so 4 pens cost 10 dollars.", "10",
     "He pays 2.5 dollars per pen, so 4 pens cost 10 dollars."),
    # The answer statement stays even when it names the peers; a chain with nothing else keeps it.
    ("I agree with the other agents that the answer is \\boxed{18}.", "18",
     "I agree with the other agents that the answer is \\boxed{18}."),
    ("My previous answer was wrong. I now agree with 21.", None, "I now agree with 21."),
    ("Each box holds 6 eggs. 2 boxes hold 12 eggs.", "12", "Each box holds 6 eggs. 2 boxes hold 12 eggs."),
])
def test_clean_reasoning(text, answer, want):
    assert clean_reasoning(text, answer) == want
    assert "".join(split_sentences(text)) == text  # sentence splitting loses nothing


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_cleaned_chains_keep_their_answer(shared_data: Path, name: str):
    result = read_mags([shared_data / "mag" / name], strict=False)
    assert result.mags
    changed = removed = chains = 0
    for mag in result.mags:
        cleaned, stats = clean_mag(mag)
        changed, removed, chains = changed + stats.changed, removed + stats.chars_removed, chains + stats.chains
        for before, after in zip(mag.responses, cleaned.responses, strict=True):
            assert (before.answer, before.label, before.agent, before.round) == \
                (after.answer, after.label, after.agent, after.round)
            if before.reasoning is None:
                assert after.reasoning is None
                continue
            assert after.reasoning.strip()
            last = split_sentences(before.reasoning.strip())[-1].strip()
            states = before.answer and before.answer.strip() in last and \
                ("answer" in last.lower() or "\\boxed" in last)
            if states:  # the chain ended by stating its answer ...
                assert after.reasoning.endswith(last), (before.reasoning, after.reasoning)  # ... and still does
            assert extract_boxed(after.reasoning) == extract_boxed(before.reasoning)  # what the debate reader read
            if after.reasoning == last:
                continue  # every sentence spoke of the peers: the conclusion is kept as the chain
            kept = [s.lower() for s in split_sentences(after.reasoning)]
            stating = [s for s in kept if before.answer and before.answer.strip().lower() in s]
            assert not [s for s in kept if s not in stating and any(p in s for p in PEER_PHRASES)], after.reasoning
    print(f"{name}: {changed} of {chains} chains changed, {removed} characters removed")
    assert changed <= chains
    if name.startswith("debate_du/gsm_3"):  # Du et al.'s rounds quote the peers all the time
        assert changed > chains // 10


def test_synthetic_chains_never_quote_peers():
    from magdi_dist.mag.synth import synth_mags

    for mag in synth_mags(50, rounds=3, seed=1):
        for r in mag.responses:
            assert clean_reasoning(r.reasoning, r.answer) == r.reasoning
            assert "other" not in r.reasoning.lower() and "agree" not in r.reasoning.lower()


def test_inspect_reports_cleaning_per_file(shared_data: Path):
    path = shared_data / "mag" / "debate_du" / "gsm_3_2_100.json"
    out = subprocess.run([sys.executable, "-m", "magdi_dist.cli", "inspect", str(path), "--json"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    cleaning = json.loads(out)["cleaning"]
    mags = read_mags([path]).mags
    want = sum(clean_mag(m)[1].changed for m in mags)
    (entry,) = cleaning.values()
    assert entry["changed"] == want > 0 and entry["chars_removed"] > 0
    assert entry["chains"] == sum(r.reasoning is not None for m in mags for r in m.responses)


@pytest.mark.parametrize("clean", [True, False])
def test_preprocessing_trains_on_cleaned_text(tmp_path: Path, clean: bool):
    """Targets, negatives and node texts all come from the cleaned MAG; off, the peers stay."""
    from transformers import AutoTokenizer

    from magdi_dist.config import load_config
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags
    from magdi_dist.preprocess.prepare import prepare_data

    mags = []
    for m in synth_mags(12, rounds=2, seed=5):
        peer = "Based on the other agents' solutions, I check it."
        responses = [r.model_copy(update={"reasoning": f"{peer} {r.reasoning}"}) if r.round else r
                     for r in m.responses]
        mags.append(m.model_copy(update={"responses": responses}))
    data = tmp_path / "peers.jsonl"
    write_mags_jsonl(mags, data)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", [
        f"data.paths=[{data}]", f"data.clean_chains={str(clean).lower()}", "data.eval_fraction=0",
        "model.base={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
        "data.vocab_size=300", "data.max_len=128", f"train.output_dir={tmp_path / 'run'}"])
    report = prepare_data(cfg, engine="local", log=lambda _m: None)
    rows = load_train_data(report.manifest)
    tok = AutoTokenizer.from_pretrained(rows.tokenizer)
    texts = [tok.decode(r["pos_input_ids"]) for r in rows.train] + \
            [tok.decode(r["neg_input_ids"]) for r in rows.train if r["has_negative"]]
    quoted = sum("other agents" in t for t in texts)
    assert (quoted == 0) if clean else (quoted > 0)
    assert report.totals["chains_cleaned"] == (sum(r.round > 0 for m in mags for r in m.responses) if clean else 0)
    # The defaults are what ran (and nothing when cleaning is off), as the manifest records them.
    ran = json.loads(Path(report.manifest).read_text())["config"]["preprocess"]["clean_patterns"]
    assert ran == (list(DEFAULT_PATTERNS) if clean else []) and DEFAULT_PATTERNS
