"""The student: causal LM + graph encoder + scorer, the MAGDi losses and FLOPs estimates."""

from magdi_dist.model.build import TINY_PRESETS, LoraSpec, load_lm, non_embedding_params, unwrap_lm
from magdi_dist.model.encoder import GraphEncoder
from magdi_dist.model.flops import flops_per_node, flops_per_token, step_flops
from magdi_dist.model.student import MAGDiStudent, StudentConfig

__all__ = [
    "TINY_PRESETS",
    "GraphEncoder",
    "LoraSpec",
    "MAGDiStudent",
    "StudentConfig",
    "flops_per_node",
    "flops_per_token",
    "load_lm",
    "non_embedding_params",
    "step_flops",
    "unwrap_lm",
]
