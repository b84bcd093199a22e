"""model/flops.py against the matmul FLOPs torch actually runs (``torch.utils.flop_counter``), for full
fine-tuning and LoRA, and for the student's rows: the decoder on the rows that ran, the head on the
positives only. Attention is left out of the comparison (``seq_len=0``): on CPU the counter does not
count the SDPA kernel, and the formula's attention term has no weights to be right or wrong about."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torch_geometric.data import Batch, Data

from magdi_dist.model import LoraSpec, MAGDiStudent, StudentConfig, load_lm
from magdi_dist.model.flops import decoder_flops_per_token, flops_per_token, head_flops_per_token

V = 400
SPEC = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128}
LORA = LoraSpec(r=4, alpha=8, dropout=0.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def measured_lm_flops(lm, rows: int = 4, seq: int = 16) -> tuple[int, int]:
    """(matmul FLOPs of one forward + backward of full-length rows, tokens)."""
    ids = torch.randint(0, V, (rows, seq), generator=torch.Generator().manual_seed(0))
    lm.train()
    with FlopCounterMode(display=False) as counter:
        lm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().sum().backward()
    return counter.get_total_flops(), rows * seq


def test_full_fine_tuning_is_6n_per_token():
    lm = load_lm(SPEC, vocab_size=V)
    flops, tokens = measured_lm_flops(lm)
    assert flops_per_token(lm, 0) * tokens == pytest.approx(flops, rel=0.01)


def test_lora_counts_4n_for_the_frozen_base():
    """Frozen weights get no weight gradient: ~4 N, not 6 N, per token (6 N would be ~50% over)."""
    full, lora = load_lm(SPEC, vocab_size=V), load_lm(SPEC, vocab_size=V, lora=LORA)
    flops, tokens = measured_lm_flops(lora)
    estimate = flops_per_token(lora, 0) * tokens
    # Slightly above the measured count: the first layer's q/k/v need no input gradient either
    # (nothing before them trains), which the per-weight rule does not know.
    assert flops <= estimate <= 1.05 * flops
    assert flops_per_token(full, 0) * tokens > 1.4 * flops
    assert head_flops_per_token(lora) == 4 * 64 * V and head_flops_per_token(full) == 6 * 64 * V


def test_student_counts_the_decoder_on_rows_that_ran_and_the_head_on_positives():
    """Pair 1 has no negative: its placeholder row is skipped, and the head runs on rows 0-1 only."""
    g = torch.Generator().manual_seed(1)
    T, H = 8, SPEC["hidden_size"]
    ids = torch.randint(3, V, (4, T), generator=g)
    mask = torch.ones((4, T), dtype=torch.long)
    mask[3, 1:] = 0  # the one-token placeholder
    labels = ids.clone()
    labels[2:] = -100
    edges = torch.tensor([(0, 2), (1, 2), (2, 3)]).t()
    graphs = [Data(x=torch.randn(4, H, generator=g), edge_index=edges, y=torch.tensor([0, 1, 0, 2]), num_nodes=4)
              for _ in range(2)]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "pair_mask": torch.tensor([1.0, 0.0]),
             "graph": Batch.from_data_list(graphs), "pos_node": torch.tensor([0, 4]),
             "neg_node": torch.tensor([1, -1]), "mag_ids": ["a", "b"]}
    student = MAGDiStudent(StudentConfig(base="unused", gcn_hidden=16, gcn_dropout=0.0),
                           lm=load_lm(SPEC, vocab_size=V)).train()
    with FlopCounterMode(display=False) as counter:
        out = student(batch)
        out["loss"].backward()
    by_module = counter.get_flop_counts()
    lm_flops = sum(sum(by_module[f"MAGDiStudent.lm.{m}"].values()) for m in ("model", "lm_head"))
    assert int(out["num_tokens"]) == 3 * T and int(out["num_head_tokens"]) == 2 * T
    estimate = (decoder_flops_per_token(student, 0) * int(out["num_tokens"])
                + head_flops_per_token(student) * int(out["num_head_tokens"]))
    assert estimate == pytest.approx(lm_flops, rel=0.01)
