"""The domain: MAG schema, readers, grading, graph building, synthetic MAGs. Knows nothing of Ray,
DeepSpeed or MLflow."""

from magdi_dist.mag.errors import MAGInputError
from magdi_dist.mag.schema import MAG, SCHEMA_VERSION, TASK_FAMILIES, Label, Provenance, Response

__all__ = ["MAG", "SCHEMA_VERSION", "TASK_FAMILIES", "Label", "MAGInputError", "Provenance", "Response"]
