"""Evaluate an exported student on held-out questions: accuracy with a confidence interval, answer
extraction, self-consistency, cost against the teachers, optionally sharded on Ray and logged to
MLflow. The workflow is ``magdi_dist.recipes.evaluate.evaluate(EvalConfig(...))``. Nothing is imported here,
so importing the package stays cheap."""
