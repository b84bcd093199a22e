"""Ray Data preprocessing: teacher transcripts -> graded MAGs -> contrastive pair rows with tokens and
frozen node features -> deterministic Parquet shards + ``manifest.json`` (``prepare.prepare_data``, what
every launcher calls first; ``data.shards`` reads them). Knows nothing of DeepSpeed or MLflow."""
