"""Every MAGDi loss term against an independent computation written here from its formula.

The student runs its own code path (decoder + head on positive rows, pooled scores, GCN); the
expectations below use the plain HF forward for logits/hidden states and hand-written math for the
rest: shifted CE via log_softmax + gather, position weights 1..n, margin hinge, dense GCN propagation
D^-1/2 (A + I) D^-1/2 X W + b with the encoder's own weights, and CE on the node logits.
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from magdi_dist.model import (
    TINY_PRESETS,
    LoraSpec,
    MAGDiStudent,
    StudentConfig,
    flops_per_token,
    load_lm,
    non_embedding_params,
)
from magdi_dist.model.forward import lm_forward
from magdi_dist.model.losses import ntp_loss, pool_hidden

V, H, PAD = 50, 32, 0
TINY = {"hidden_size": H, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 64}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine spinning OpenMP
    workers make each op ~1000x slower; restored afterwards so other modules keep their setting."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def tiny_lm(seed=0, **kw):
    return load_lm(TINY, vocab_size=V, seed=seed, **kw)


def make_batch(pair_mask=(1.0, 0.0)) -> dict:
    """2 pairs; pair 1's negative is a one-token placeholder when pair_mask[1] == 0; two 6-node graphs."""
    g = torch.Generator().manual_seed(1)
    T = 7
    ids = torch.full((4, T), PAD, dtype=torch.long)
    mask = torch.zeros((4, T), dtype=torch.long)
    lengths = [7, 5, 6, 4 if pair_mask[1] else 1]
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, V, (n,), generator=g)
        mask[r, :n] = 1
    labels = torch.full((4, T), -100, dtype=torch.long)
    labels[0, 3:7] = ids[0, 3:7]  # prompt = first 3 tokens
    labels[1, 2:5] = ids[1, 2:5]
    # graph 0: 2 agents x 3 rounds, all-to-all between rounds; graph 1: a sparser topology
    e0 = [(0, 2), (0, 3), (1, 2), (1, 3), (2, 4), (2, 5), (3, 4), (3, 5)]
    e1 = [(0, 2), (1, 3), (3, 4), (2, 5)]
    graphs = [
        Data(x=torch.randn(6, H, generator=g), edge_index=torch.tensor(e).t(), y=torch.tensor(y), num_nodes=6)
        for e, y in ((e0, [0, 1, 0, 1, 0, 2]), (e1, [1, 0, 2, 0, 1, 0]))
    ]
    return {
        "input_ids": ids, "attention_mask": mask, "labels": labels,
        "pair_mask": torch.tensor(pair_mask),
        "graph": Batch.from_data_list(graphs),
        "pos_node": torch.tensor([0, 6 + 1]),
        "neg_node": torch.tensor([1, 6 + 0 if pair_mask[1] else -1]),
        "mag_ids": ["g0", "g1"],
    }


def manual_pool(hidden, mask, weighted=True):
    rows = []
    for r in range(hidden.shape[0]):
        real = [t for t in range(hidden.shape[1]) if mask[r, t]]
        w = [k + 1 if weighted else 1 for k in range(len(real))]
        rows.append(sum(wk * hidden[r, t] for wk, t in zip(w, real, strict=True)) / sum(w))
    return torch.stack(rows)


def manual_gcn(encoder, x, edge_index):
    n = x.shape[0]
    a = torch.zeros(n, n)
    for s, d in edge_index.t().tolist():
        a[d, s] = 1.0  # messages flow source -> target
    a_hat = a + torch.eye(n)
    d_inv_sqrt = torch.diag(a_hat.sum(dim=1).pow(-0.5))
    norm = d_inv_sqrt @ a_hat @ d_inv_sqrt
    h = x
    for conv in encoder.convs:
        h = torch.relu(norm @ (h @ conv.lin.weight.t()) + conv.bias)
    return h @ encoder.head.weight.t() + encoder.head.bias


def manual_losses(student, batch, live=False):
    cfg, B = student.cfg, 2
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    out = student.lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    logp = torch.log_softmax(out.logits[:B].double(), dim=-1)
    terms = [-logp[b, t].gather(0, labels[b, t + 1].view(1))[0]
             for b in range(B) for t in range(ids.shape[1] - 1) if labels[b, t + 1] != -100]
    ntp = torch.stack(terms).mean()

    pooled = manual_pool(out.hidden_states[-1], mask, cfg.pooling == "weighted_mean")
    l1, l2 = student.scorer[0], student.scorer[2]
    scores = torch.tanh(torch.relu(pooled @ l1.weight.t() + l1.bias) @ l2.weight.t() + l2.bias).view(-1)
    hinge = [max(0.0, cfg.margin - (scores[b] - scores[B + b]).item())
             for b in range(B) if batch["pair_mask"][b] > 0]
    margin = sum(hinge) / len(hinge) if hinge else 0.0

    graph = batch["graph"]
    x = graph.x.clone()
    if live:
        x[batch["pos_node"]] = pooled[:B]
        for b in range(B):
            if batch["neg_node"][b] >= 0:
                x[batch["neg_node"][b]] = pooled[B + b]
    node_logits = manual_gcn(student.encoder, x, graph.edge_index)
    node = -torch.log_softmax(node_logits, dim=-1)[torch.arange(len(graph.y)), graph.y].mean()
    total = cfg.ntp_weight * ntp + cfg.margin_weight * margin + cfg.node_weight * node
    return {"ntp_loss": ntp, "margin_loss": margin, "node_loss": node, "loss": total}


def make_student(**kw):
    cfg = StudentConfig(base="unused", gcn_layers=2, gcn_hidden=16, gcn_dropout=0.0, scorer_hidden=8,
                        margin=1.5, ntp_weight=0.7, node_weight=0.5, margin_weight=0.3, **kw)
    return MAGDiStudent(cfg, lm=tiny_lm()).eval()


@pytest.mark.parametrize(
    ("mode", "pooling", "pair_mask"),
    [
        ("frozen", "weighted_mean", (1.0, 0.0)),
        ("frozen", "mean", (1.0, 1.0)),
        ("live", "weighted_mean", (1.0, 1.0)),
        ("live", "mean", (1.0, 0.0)),
    ],
)
@pytest.mark.parametrize("passes", ["one", "split"])
def test_losses_match_independent_computation(mode, pooling, pair_mask, passes):
    student = make_student(graph_features=mode, pooling=pooling, lm_passes=passes)
    batch = make_batch(pair_mask)
    with torch.no_grad():
        got = student(batch)
        want = manual_losses(student, batch, live=mode == "live")
    for key in ("ntp_loss", "margin_loss", "node_loss", "loss"):
        assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5, abs=1e-6), key
    assert float(got["margin_loss"]) > 0  # the margin 1.5 exceeds any tanh score gap at init
    # real tokens: both positives, the real negative(s), never the placeholder or padding
    want_tokens = 7 + 5 + 6 + (4 if pair_mask[1] else 0)
    assert int(got["num_tokens"]) == want_tokens
    assert int(got["num_target_tokens"]) == (7 - 3 - 0) + (5 - 2) - 0  # labels at t+1 of 1..T-1


def test_ntp_only_runs_no_negative_row():
    """margin_weight 0 with frozen features: no loss reads a negative, so the LM sees the positive rows
    only (counted at the embedding layer), at their own width, and the tokens and FLOPs counted are
    the positives'. The NTP loss is the full student's."""
    batch = make_batch((1.0, 1.0))
    pad = torch.nn.functional.pad  # 2 more padding columns, as when a longer negative sets the width
    batch.update(input_ids=pad(batch["input_ids"], (0, 2), value=PAD),
                 attention_mask=pad(batch["attention_mask"], (0, 2)), labels=pad(batch["labels"], (0, 2), value=-100))
    seen = []

    def count(student):
        hook = student.lm.get_input_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape))
        with torch.no_grad():
            out = student(batch)
        hook.remove()
        return out, seen.pop()

    full, full_rows = count(make_student())
    ntp_only = make_student()
    ntp_only.cfg.margin_weight, ntp_only.cfg.node_weight = 0.0, 0.0
    sft, sft_rows = count(ntp_only)
    assert tuple(full_rows) == (4, 9) and tuple(sft_rows) == (2, 7)  # the 2 positives, at their own width
    assert int(sft["num_tokens"]) == 7 + 5 and int(full["num_tokens"]) == 7 + 5 + 6 + 4
    assert float(sft["ntp_loss"]) == pytest.approx(float(full["ntp_loss"]), rel=1e-5)
    assert float(sft["margin_loss"]) == 0.0 and float(sft["loss"]) == pytest.approx(0.7 * float(full["ntp_loss"]),
                                                                                  rel=1e-5)


def test_split_passes_run_each_side_at_its_own_width_with_the_same_losses_and_gradients():
    """lm_passes split: the positives at their width, the negatives at theirs; losses and every
    gradient are those of the one padded pass."""
    batch = make_batch((1.0, 1.0))
    pad = torch.nn.functional.pad  # 2 more padding columns, as when a longer row of another rank sets the width
    batch.update(input_ids=pad(batch["input_ids"], (0, 2), value=PAD),
                 attention_mask=pad(batch["attention_mask"], (0, 2)), labels=pad(batch["labels"], (0, 2), value=-100))
    runs = {}
    for passes in ("one", "split"):
        student = make_student(lm_passes=passes)
        seen = []
        hook = student.lm.get_input_embeddings().register_forward_hook(
            lambda _m, args, _o, seen=seen: seen.append(tuple(args[0].shape)))
        out = student(batch)
        out["loss"].backward()
        hook.remove()
        runs[passes] = (out, seen, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    (one, one_seen, one_grads), (split, split_seen, split_grads) = runs["one"], runs["split"]
    assert one_seen == [(4, 9)] and split_seen == [(2, 7), (2, 6)]  # positives 7 and 5, negatives 6 and 4
    for key in ("ntp_loss", "margin_loss", "node_loss", "loss", "num_tokens"):
        assert float(split[key]) == pytest.approx(float(one[key]), rel=1e-5, abs=1e-7), key
    assert one_grads.keys() == split_grads.keys() and len(one_grads) > 10
    for name, grad in one_grads.items():
        torch.testing.assert_close(split_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_lm_passes_auto_is_one_pass_only_under_zero3_on_several_ranks():
    from magdi_dist.model.student import resolve_lm_passes

    cfg = StudentConfig(base="unused")
    zero3, zero2 = {"zero_optimization": {"stage": 3}}, {"zero_optimization": {"stage": 2}}
    assert resolve_lm_passes(cfg, zero3, 2).lm_passes == "one"
    assert resolve_lm_passes(cfg, zero3, 1).lm_passes == "split"
    assert resolve_lm_passes(cfg, zero2, 8).lm_passes == "split"
    assert resolve_lm_passes(cfg, None, 1).lm_passes == "split"
    assert resolve_lm_passes(cfg.model_copy(update={"lm_passes": "one"}), zero2, 1).lm_passes == "one"


def test_fast_path_equals_full_forward_and_peft():
    ids = make_batch()["input_ids"]
    mask = make_batch()["attention_mask"]
    for lm in (tiny_lm(), tiny_lm(lora=LoraSpec(r=4, alpha=8, dropout=0.0))):
        lm.eval()
        with torch.no_grad():
            fast_h, fast_logits = lm_forward(lm, ids, mask, head_rows=2)
            slow_h, slow_logits = lm_forward(lm, ids, mask, head_rows=2, force_generic=True)
        assert torch.allclose(fast_h, slow_h, atol=1e-6)
        assert torch.allclose(fast_logits, slow_logits, atol=1e-6)
        assert fast_logits.shape == (2, ids.shape[1], V)


def test_pool_and_ntp_edge_cases():
    hidden = torch.arange(12, dtype=torch.float32).view(2, 3, 2)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    # right padding: weights 1, 2 on positions 0, 1; left padding: weights 1, 2 on positions 1, 2
    assert torch.allclose(pool_hidden(hidden, right)[0], (1 * hidden[0, 0] + 2 * hidden[0, 1]) / 3)
    assert torch.allclose(pool_hidden(hidden, left)[0], (1 * hidden[0, 1] + 2 * hidden[0, 2]) / 3)
    assert torch.allclose(pool_hidden(hidden, right, "mean")[0], hidden[0, :2].mean(0))
    loss, n = ntp_loss(torch.randn(2, 3, 5, requires_grad=True), torch.full((2, 3), -100))
    assert float(loss.detach()) == 0.0 and int(n) == 0 and loss.requires_grad  # no NaN on an all-prompt batch


def test_load_from_local_directory_and_seeded_init(tmp_path):
    lm = tiny_lm(seed=3)
    lm.save_pretrained(tmp_path / "student")
    again = load_lm(str(tmp_path / "student"))
    ids = make_batch()["input_ids"]
    with torch.no_grad():
        assert torch.equal(lm(input_ids=ids).logits, again(input_ids=ids).logits)
    same, other = tiny_lm(seed=3), tiny_lm(seed=4)
    assert all(torch.equal(a, b) for a, b in zip(lm.parameters(), same.parameters(), strict=True))
    assert not torch.equal(lm.lm_head.weight, other.lm_head.weight)
    with pytest.raises(ValueError, match="unknown model spec"):
        load_lm("no-such-preset", vocab_size=V)


def test_presets_sizes_and_flops():
    want = {"tiny-1m": 1_004_928, "tiny-5m": 4_746_496, "tiny-20m": 19_274_240}
    assert set(TINY_PRESETS) == set(want)
    for name, n in want.items():
        lm = load_lm(name, vocab_size=1000)
        assert non_embedding_params(lm) == n
        assert sum(p.numel() for p in lm.parameters()) == n + 1000 * lm.config.hidden_size  # tied
    lm = load_lm("tiny-1m", vocab_size=1000)
    assert flops_per_token(lm) == 6 * 1_004_928 + 6 * 128 * 1000


def test_lora_and_checkpointing_train_the_right_parameters():
    cfg = StudentConfig(base="unused", gcn_hidden=16, scorer_hidden=8, gcn_dropout=0.0)
    lm = tiny_lm(lora=LoraSpec(r=4, alpha=8, dropout=0.0), gradient_checkpointing=True)
    student = MAGDiStudent(cfg, lm=lm).train()
    student(make_batch())["loss"].backward()
    grads = {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_" in n for n in grads)
    assert any(n.startswith("encoder.") for n in grads) and any(n.startswith("scorer.") for n in grads)
    assert not any(n.startswith("lm.") and "lora_" not in n for n in grads)  # base weights frozen
