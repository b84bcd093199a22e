"""MAG -> torch_geometric ``Data``: the graph the node-classification objective trains on."""

from __future__ import annotations

import torch
from torch_geometric.data import Batch, Data

from magdi_dist.mag.schema import MAG


def to_pyg(mag: MAG, x: torch.Tensor | None = None) -> Data:
    """One graph per MAG; node i is ``mag.responses[i]`` (call ``grade_mag`` first).

    ``y`` holds the node classes (0 correct, 1 incorrect, 2 missing: ``Label``), ``node_round`` and
    ``node_agent`` (index into ``mag.agents``) keep the node -> response map, and ``x`` is the node
    feature matrix when one is given (frozen features from the base student).
    """
    n = len(mag.responses)
    edges = mag.edge_list()
    edge_index = (
        torch.tensor(edges, dtype=torch.long).t().contiguous()
        if edges
        else torch.empty((2, 0), dtype=torch.long)
    )
    agents = {name: i for i, name in enumerate(mag.agents)}
    data = Data(
        edge_index=edge_index,
        y=torch.tensor([int(label) for label in mag.labels()], dtype=torch.long),
        node_round=torch.tensor([r.round for r in mag.responses], dtype=torch.long),
        node_agent=torch.tensor([agents[r.agent] for r in mag.responses], dtype=torch.long),
        num_nodes=n,
    )
    if x is not None:
        if x.shape[0] != n:
            raise ValueError(f"MAG {mag.id}: {x.shape[0]} feature rows for {n} nodes")
        data.x = x
    data.mag_id = mag.id
    return data


def batch_graphs(graphs: list[Data]) -> Batch:
    """PyG's own batching: node indices are offset per graph and ``batch`` maps node -> graph."""
    return Batch.from_data_list(graphs)
