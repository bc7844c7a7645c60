"""Prefect flows: the asset pipeline, catalog generation, retries, LoRA training."""
