"""What a run records: MLflow runs, the gated registry, reports, Prefect artifacts, events."""
