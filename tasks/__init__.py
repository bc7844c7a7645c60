"""One Prefect task per pipeline stage: read inputs from storage, call models/, write outputs.

Tasks receive ids, object keys and a :class:`tasks.config.PipelineConfig` of plain values; they
open the database and the object store they need inside the run.
"""
