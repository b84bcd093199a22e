"""The graph encoder of the node-classification objective: a GCN over one batch of MAGs."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GCNConv

NUM_NODE_CLASSES = 3  # Label: correct, incorrect, missing


class GraphEncoder(nn.Module):
    """``layers`` GCNConv layers (ReLU + dropout after each) then a linear head to the 3 node classes.

    The reference uses GCNConv(H -> 512), ReLU, dropout 0.5, GCNConv(512 -> 3); here the last
    propagation is a configurable stack and the classifier is a plain linear head, so ``layers`` sets
    the receptive field (how many rounds back a node's prediction can look) independently of the head.
    Edges are used as given (directed, forward in time), as in the reference; GCNConv adds self-loops
    and the symmetric normalisation D^-1/2 (A + I) D^-1/2 with in-degrees.
    """

    def __init__(self, in_dim: int, hidden: int = 512, layers: int = 2, dropout: float = 0.5):
        super().__init__()
        if layers < 1:
            raise ValueError("the graph encoder needs at least one GCN layer")
        dims = [in_dim] + [hidden] * layers
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, NUM_NODE_CLASSES)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Node logits [N, 3]."""
        for conv in self.convs:
            x = self.dropout(torch.relu(conv(x, edge_index)))
        return self.head(x)

    def flops_per_node(self, avg_degree: float = 3.0) -> float:
        """Training FLOPs per node (forward + backward ~ 3x forward): the dense transforms cost
        2 * in * out each, the sparse propagation 2 * out per incoming edge (self-loop included)."""
        dense = sum(2 * c.in_channels * c.out_channels for c in self.convs)
        sparse = sum(2 * c.out_channels * (avg_degree + 1) for c in self.convs)
        head = 2 * self.head.in_features * self.head.out_features
        return 3.0 * (dense + sparse + head)
