"""Ray Data preprocessing: teacher transcripts -> graded MAGs -> contrastive pair rows with tokens and
frozen node features -> deterministic Parquet shards + ``manifest.json``; and the shard reader the
training loop consumes. Knows nothing of DeepSpeed or MLflow."""
