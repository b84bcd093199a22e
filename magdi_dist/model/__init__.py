"""The student: causal LM + graph encoder + scorer, the MAGDi losses and FLOPs estimates."""

# The config types live in magdi_dist.config (the top of the tree); re-exported for model users.
from magdi_dist.config import LoraSpec, StudentConfig
from magdi_dist.model.build import TINY_PRESETS, load_lm, non_embedding_params, unwrap_lm
from magdi_dist.model.encoder import GraphEncoder
from magdi_dist.model.flops import flops_per_node, flops_per_token, step_flops
from magdi_dist.model.student import MAGDiStudent

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
