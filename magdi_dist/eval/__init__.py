"""Evaluate an exported student on held-out questions: accuracy with a confidence interval, answer
extraction, self-consistency, cost against the teachers, never on its own training questions
(contamination.py), optionally sharded on Ray or asked of OpenAI-compatible servers (remote.py) and
logged to MLflow. The workflow is ``magdi_dist.recipes.evaluate.evaluate(EvalConfig(...))``. Nothing
is imported here, so importing the package stays cheap."""
