"""Pairing rule, prompt/target formats, tokenizer determinism, rows -> collate shapes and masks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import magdi_dist.data.tokenizer as tokenizer_module
from magdi_dist.data import (
    RowConfig,
    collate,
    encode_chain,
    format_prompt,
    format_target,
    make_pairs,
    rows_from_mags,
    zero_features,
)
from magdi_dist.data.pairs import Pair
from magdi_dist.data.tokenizer import build_bpe, mag_texts, train_tokenizer
from magdi_dist.mag.schema import MAG, Label, Provenance, Response

C, W, M = Label.CORRECT, Label.INCORRECT, Label.MISSING
ROW_FIELDS = {"mag_id", "question_key", "source_file", "source_record", "pair_index", "pos_input_ids", "pos_labels",
              "neg_input_ids", "has_negative", "node_features", "feature_dim", "edge_index", "node_labels",
              "pos_node", "neg_node"}


def build_mag(k: int, grid: str, agents: int = 2, options=None) -> MAG:
    code = {"c": C, "i": W}
    responses = [
        Response(agent=f"a{j % agents}", round=j // agents, label=code[ch], answer="7" if ch == "c" else "9",
                 reasoning=f"Agent {j % agents} thinks step by step about case {k} number {j}.")
        for j, ch in enumerate(grid) if ch != "m"
    ]
    return MAG(id=f"m{k}", task="numeric", question=f"What is {k} + 2?", gold_answer="7", options=options,
               responses=responses, source=Provenance(file="t.jsonl", record=k, format="jsonl"))


MAGS = [build_mag(0, "ciii"), build_mag(1, "ccmcic"), build_mag(2, "cc"), build_mag(3, "ii")]
TEXTS = mag_texts(MAGS)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=300)


def reference_pairs(labels):
    """The reference's prepare_contrastive_samples, over node indices (label codes are ours)."""
    pos = [i for i, label in enumerate(labels) if label == C]
    neg = [i for i, label in enumerate(labels) if label == W] or [None]  # its "NA" padding
    if not pos:
        return []
    if len(pos) > len(neg):
        neg = (neg * (len(pos) // len(neg) + 1))[: len(pos)]
    elif len(neg) > len(pos):
        pos = (pos * (len(neg) // len(pos) + 1))[: len(neg)]
    return list(zip(pos, neg, strict=True))


@pytest.mark.parametrize("labels", [
    [C, W, W, W], [C, C, C, W], [C, C, M, C, W, C], [C, C], [W, W], [M, C, M], [C, W, C, W, W], [],
])
def test_pairing_rule(labels):
    pairs = make_pairs(labels)
    assert [tuple(p) for p in pairs] == reference_pairs(labels)
    n_pos, n_neg = labels.count(C), labels.count(W)
    assert len(pairs) == (0 if n_pos == 0 else max(n_pos, n_neg) if n_neg else n_pos)
    if n_pos and n_neg:  # every chain of both sides is used, the smaller side cyclically
        assert {p.pos for p in pairs} == {i for i, x in enumerate(labels) if x == C}
        assert {p.neg for p in pairs} == {i for i, x in enumerate(labels) if x == W}


def test_pairing_examples():
    assert make_pairs([C, W, W, W]) == [Pair(0, 1), Pair(0, 2), Pair(0, 3)]
    assert make_pairs([C, C, C, W, W]) == [Pair(0, 3), Pair(1, 4), Pair(2, 3)]
    assert make_pairs([M, C, C]) == [Pair(1, None), Pair(2, None)]
    assert make_pairs([W, M]) == []


def test_prompt_and_target_formats():
    assert format_prompt("What is 2+2?", None) == "Question: What is 2+2?\nAnswer: "
    assert format_prompt(" Pick one. ", ["red", "blue"]) == "Question: Pick one.\nOptions: A) red B) blue\nAnswer: "
    assert format_prompt("Q", ["(A) x", "(B) y"]) == "Question: Q\nOptions: (A) x (B) y\nAnswer: "
    assert format_prompt(None, None) == "Question: \nAnswer: "
    assert format_target(" 2 plus 2 is 4. ", "4") == "2 plus 2 is 4. The answer is 4."
    assert format_target("No idea.", None) == "No idea."


def test_tokenizer_deterministic_and_loadable(tok, tmp_path):
    from transformers import AutoTokenizer

    a, b = tmp_path / "a", tmp_path / "b"
    train_tokenizer(TEXTS, a, vocab_size=300)
    train_tokenizer(TEXTS, b, vocab_size=300)
    files = sorted(p.name for p in a.iterdir())
    assert "tokenizer.json" in files and files == sorted(p.name for p in b.iterdir())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    # Across processes too (hash-map seeds differ per process). The module is loaded from its file so
    # the child imports only `tokenizers`, not the package (torch, transformers).
    code = ("import importlib.util as u, json, sys; s = u.spec_from_file_location('t', sys.argv[1]); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); "
            "print(m.build_bpe(json.load(sys.stdin), 300).to_str())")
    other = subprocess.run([sys.executable, "-c", code, tokenizer_module.__file__], input=json.dumps(TEXTS),
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other == build_bpe(TEXTS, 300).to_str()

    loaded = AutoTokenizer.from_pretrained(str(a))
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<s>", "</s>")
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    ids = loaded("Question: What is 3 + 2?")["input_ids"]
    assert ids[0] == 1 and ids == tok("Question: What is 3 + 2?")["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == "Question: What is 3 + 2?"
    assert loaded.decode(loaded("ünïcödé ✓", add_special_tokens=False)["input_ids"]) == "ünïcödé ✓"  # byte-level


def test_rows_follow_the_contract(tok):
    rows = rows_from_mags(MAGS, tok, RowConfig(max_length=128), zero_features(4))
    assert [r["mag_id"] for r in rows] == ["m0"] * 3 + ["m1"] * 4 + ["m2"] * 2  # m3: no correct chain
    assert [r["pair_index"] for r in rows] == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    for r in rows:
        assert set(r) == ROW_FIELDS
        assert all(type(v) in (str, int, bool, list) for v in r.values())
        mag = next(m for m in MAGS if m.id == r["mag_id"]).completed()
        n = len(mag.responses)
        assert len(r["node_features"]) == n * r["feature_dim"] and len(r["node_labels"]) == n
        assert len(r["edge_index"]) == 2 * len(mag.edge_list())
        prompt_len = len(tok(format_prompt(mag.question, mag.options))["input_ids"])
        ids, labels = r["pos_input_ids"], r["pos_labels"]
        assert labels[:prompt_len] == [-100] * prompt_len and labels[prompt_len:] == ids[prompt_len:]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert r["has_negative"] == bool(r["neg_input_ids"]) == (r["neg_node"] >= 0)
        assert r["node_labels"][r["pos_node"]] == C
        assert r["neg_node"] < 0 or r["node_labels"][r["neg_node"]] == W
    assert (rows[0]["source_file"], rows[0]["source_record"]) == ("t.jsonl", 0)


def test_truncation_and_answer_only(tok):
    prompt, target = "Question: What is 1 + 2?\nAnswer: ", format_target("Add one and two to get three.", "3")
    full, full_labels = encode_chain(tok, prompt, target, 512)
    cut, cut_labels = encode_chain(tok, prompt, target, 12)
    assert cut == full[:12] and cut_labels == full_labels[:12]
    ids, labels = encode_chain(tok, prompt, target, 512, answer_only=True)
    assert ids == full
    kept = tok.decode([t for t in labels if t != -100])
    assert kept.strip() == "The answer is 3.</s>"
    from magdi_dist.model import StudentConfig

    implied = RowConfig.for_student(StudentConfig(answer_only_loss=True, graph_features="live",
                                                  live_extra_nodes=2, live_node_max_tokens=64), 256)
    assert (implied.max_length, implied.answer_only_loss, implied.node_max_tokens) == (256, True, 64)
    # a prompt that fills max_length leaves no target: the pair is dropped, not trained on nothing
    assert rows_from_mags(MAGS[:1], tok, RowConfig(max_length=8), zero_features(2)) == []


def test_collate_shapes_and_masks(tok):
    rows = rows_from_mags(MAGS, tok, RowConfig(max_length=128), zero_features(4))
    rows = [rows[0], rows[7], rows[3]]  # m0 pair, m2 pair without negative, m1 pair
    B, pad = len(rows), tok.pad_token_id
    batch = collate(rows, pad)
    T = max(max(len(r["pos_input_ids"]), len(r["neg_input_ids"])) for r in rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (2 * B, T)
    assert (batch["labels"][B:] == -100).all()  # no NTP on negatives
    assert batch["pair_mask"].tolist() == [1.0, 0.0, 1.0]
    for b, r in enumerate(rows):
        n = len(r["pos_input_ids"])
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (T - n)
        assert batch["labels"][b].tolist() == r["pos_labels"] + [-100] * (T - n)
        assert (batch["input_ids"][b, n:] == pad).all()
    # the placeholder negative: one attended pad token
    assert batch["attention_mask"][B + 1].sum() == 1 and batch["input_ids"][B + 1, 0] == pad
    g = batch["graph"]
    assert g.num_graphs == B and g.x.shape == (4 + 2 + 6, 4) and g.x.dtype == torch.float32
    assert batch["pos_node"].tolist() == [rows[0]["pos_node"], 4 + rows[1]["pos_node"], 6 + rows[2]["pos_node"]]
    assert batch["neg_node"].tolist() == [rows[0]["neg_node"], -1, 6 + rows[2]["neg_node"]]
    assert batch["mag_ids"] == ["m0", "m2", "m1"]
