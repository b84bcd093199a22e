"""Graph features: frozen vs live gradient flow, the live-substitution premise, and alignment of every
example with its own question's graph."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from magdi_dist.data import FrozenFeatureExtractor, RowConfig, collate, encode_chain, node_parts, rows_from_mags
from magdi_dist.data.tokenizer import mag_texts, train_tokenizer
from magdi_dist.mag.schema import MAG, Label, Provenance, Response
from magdi_dist.model import MAGDiStudent, StudentConfig, load_lm
from magdi_dist.model.forward import lm_forward
from magdi_dist.model.losses import pool_hidden

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
CODE = {"c": Label.CORRECT, "i": Label.INCORRECT}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine spinning OpenMP
    workers make each op ~1000x slower; restored afterwards so other modules keep their setting."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def build_mag(k: int, agents: int, grid: str) -> MAG:
    """Node j of the canonical order is (round j // agents, agent j % agents); 'm' = missing."""
    responses = []
    for j, ch in enumerate(grid):
        if ch == "m":
            continue
        answer = str(k + 1) if ch == "c" else str(k + 7)
        responses.append(Response(agent=f"agent{j % agents}", round=j // agents, label=CODE[ch], answer=answer,
                                  reasoning=f"Round {j // agents}: agent {j % agents} adds {k} and {j} " * (1 + j % 3)))
    return MAG(id=f"q{k}", task="numeric", question=f"Question {k}: what is {k} plus one?", gold_answer=str(k + 1),
               responses=responses, source=Provenance(file="mem.jsonl", record=k, format="jsonl"))


MAGS = [
    build_mag(0, 2, "ciic"),  # 2x2, 4 edges
    build_mag(1, 3, "cicmci"),  # 3x2 with a missing node, 9 edges
    build_mag(2, 2, "iccicc"),  # 2x3, 8 edges
    build_mag(3, 3, "iiiciicmm"),  # 3x3, early stop, 18 edges
    build_mag(4, 2, "cc"),  # no incorrect chain: pairs without negative
    build_mag(5, 2, "ii"),  # no correct chain: no pair
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(mag_texts(MAGS), tmp_path_factory.mktemp("tok"), vocab_size=320)


@pytest.fixture(scope="module")
def lm(tok):
    return load_lm(TINY, tokenizer=tok, seed=0)


def tag_features(mags):
    """x[i] = (MAG number, node index, number of nodes): lets the test read which graph a node is from."""
    return [np.array([[int(m.id[1:]), i, len(m.responses)] for i in range(len(m.responses))], dtype=np.float32)
            for m in mags]


def test_every_example_gets_its_own_graph(tok):
    rows = rows_from_mags(MAGS, tok, RowConfig(max_length=96), tag_features)
    random.Random(0).shuffle(rows)
    batch = collate(rows, tok.pad_token_id)
    graph, B = batch["graph"], len(rows)
    by_id = {m.id: m.completed() for m in MAGS}
    assert {r["mag_id"] for r in rows} == {"q0", "q1", "q2", "q3", "q4"}  # q5 has no correct chain
    for b, row in enumerate(rows):
        mag = by_id[batch["mag_ids"][b]]
        assert batch["mag_ids"][b] == row["mag_id"] == graph.mag_id[b]
        g = graph.get_example(b)
        assert g.num_nodes == len(mag.responses)
        assert g.y.tolist() == [int(label) for label in mag.labels()]
        assert [tuple(e) for e in g.edge_index.t().tolist()] == mag.edge_list()
        assert (g.x[:, 0] == int(mag.id[1:])).all() and g.x[:, 1].tolist() == list(range(g.num_nodes))
        lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
        p, n = int(batch["pos_node"][b]), int(batch["neg_node"][b])
        assert lo <= p < hi and graph.y[p] == Label.CORRECT and p - lo == row["pos_node"]
        if row["has_negative"]:
            assert lo <= n < hi and graph.y[n] == Label.INCORRECT and batch["pair_mask"][b] == 1
        else:
            assert n == -1 and batch["pair_mask"][b] == 0 and mag.id == "q4"
        # rows b and B+b carry exactly the texts of those nodes
        pos_ids, _ = encode_chain(tok, *node_parts(mag, p - lo, tok), 96)
        real = batch["attention_mask"][b].bool()
        assert batch["input_ids"][b][real].tolist() == pos_ids
        if row["has_negative"]:
            neg_ids, _ = encode_chain(tok, *node_parts(mag, n - lo, tok), 96)
            assert batch["input_ids"][B + b][batch["attention_mask"][B + b].bool()].tolist() == neg_ids


def test_frozen_features_are_the_rows_embeddings(tok, lm):
    extractor = FrozenFeatureExtractor(lm, tok, pooling="weighted_mean", max_tokens=96, batch_size=3)
    feats = extractor([m.completed() for m in MAGS])
    assert np.array_equal(feats[0], extractor([m.completed() for m in MAGS])[0])  # deterministic
    missing = [i for i, r in enumerate(MAGS[1].completed().responses) if r.reasoning is None]
    assert missing and not feats[1][missing].any() and feats[1].any(axis=1).sum() == 5
    rows = rows_from_mags(MAGS, tok, RowConfig(max_length=96), extractor)
    batch = collate(rows, tok.pad_token_id)
    lm.eval()
    with torch.no_grad():
        hidden, _ = lm_forward(lm, batch["input_ids"], batch["attention_mask"], head_rows=None)
    pooled, x, B = pool_hidden(hidden, batch["attention_mask"]), batch["graph"].x, len(rows)
    # The premise of live features: row b's embedding is node pos_node[b]'s feature (same text, same pooling).
    assert torch.allclose(pooled[:B], x[batch["pos_node"]], atol=1e-5)
    has = batch["neg_node"] >= 0
    assert torch.allclose(pooled[B:][has], x[batch["neg_node"][has]], atol=1e-5)


@pytest.mark.parametrize(("mode", "extra"), [("frozen", 0), ("live", 0), ("live", 2)])
def test_node_loss_reaches_the_lm_only_when_live(tok, mode, extra):
    lm = load_lm(TINY, tokenizer=tok, seed=0)
    rows = rows_from_mags(MAGS, tok, RowConfig(max_length=64, node_max_tokens=32 if extra else 0),
                          FrozenFeatureExtractor(lm, tok, max_tokens=64))
    batch = collate(rows, tok.pad_token_id, live_extra_nodes=extra, live_node_max_tokens=24)
    cfg = StudentConfig(base="unused", graph_features=mode, live_extra_nodes=extra, gcn_hidden=16,
                        gcn_dropout=0.0, ntp_weight=0.0, margin_weight=0.0, node_weight=1.0)
    student = MAGDiStudent(cfg, lm=lm).train()
    out = student(batch)
    out["loss"].backward()
    lm_grads = [p.grad for p in student.lm.parameters()]
    assert any(g is not None and g.any() for g in (p.grad for p in student.encoder.parameters()))
    if mode == "frozen":
        assert all(g is None or not g.any() for g in lm_grads)  # exactly zero
    else:
        assert any(g is not None and g.any() for g in lm_grads)
    if extra:
        own = set(batch["pos_node"].tolist()) | set(batch["neg_node"].tolist())
        extra_nodes = batch["extra_node"].tolist()
        assert extra_nodes and len(set(extra_nodes)) == len(extra_nodes) and not own & set(extra_nodes)
        assert (batch["graph"].y[batch["extra_node"]] != Label.MISSING).all()
        assert batch["extra_input_ids"].shape[1] <= 24
        assert int(out["num_tokens"]) > int(batch["attention_mask"][: len(rows)].sum())
