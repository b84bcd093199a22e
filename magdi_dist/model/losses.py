"""The three MAGDi objectives and the sequence pooling, as pure functions of tensors.

Pure so that tests can check each one against the formula, and so that the student module only wires
them together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def ntp_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy: logits [B, T, V] at position t predict labels[t + 1].

    Mean over the target tokens (labels != -100) of the whole batch, computed in float32 (bf16
    log-softmax over a 32k vocabulary loses precision). Returns (loss, number of target tokens); the
    loss is 0 (still attached to the graph) when the batch has no target token, so a rank whose
    micro-batch was all prompt never produces NaN.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    n = (shift_labels != IGNORE_INDEX).sum()
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / n.clamp(min=1), n


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "weighted_mean") -> torch.Tensor:
    """One vector per sequence from the last hidden layer [B, T, H] -> [B, H].

    ``weighted_mean`` (the reference's pooling): token k of a sequence's real tokens (k = 1..n) gets
    weight k / sum(1..n), so later tokens, which have read more of the chain, count more. The reference
    multiplies the mask by the absolute position, which equals k under right padding; counting only
    real tokens (a cumulative sum of the mask) gives the same weights under either padding side.
    ``mean``: plain mean over real tokens.
    """
    mask = attention_mask.to(hidden.dtype)
    if mode == "weighted_mean":
        weights = torch.cumsum(mask, dim=1) * mask
    elif mode == "mean":
        weights = mask
    else:
        raise ValueError(f"unknown pooling {mode!r}; expected weighted_mean or mean")
    summed = torch.einsum("bth,bt->bh", hidden, weights)
    return summed / weights.sum(dim=1, keepdim=True).clamp(min=1)


def margin_ranking_loss(
    pos_scores: torch.Tensor, neg_scores: torch.Tensor, pair_mask: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """mean over pairs with a real negative of max(0, margin - (s_pos - s_neg)).

    Pairs whose negative is a placeholder (pair_mask 0) are excluded; a batch without any real
    negative gives 0 (the reference falls back to scoring against its "NA" placeholders then).
    """
    pos_scores, neg_scores = pos_scores.reshape(-1), neg_scores.reshape(-1)
    mask = pair_mask.to(pos_scores.dtype).reshape(-1)
    per_pair = torch.clamp(margin - (pos_scores - neg_scores), min=0.0)
    return (per_pair * mask).sum() / mask.sum().clamp(min=1)


def node_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the node classifier over every node of the batch's graphs (mean over nodes).

    The reference applies CrossEntropyLoss to log-softmax outputs (a second softmax on top); here the
    raw logits go in, which is the intended objective.
    """
    return F.cross_entropy(logits.float(), labels)
