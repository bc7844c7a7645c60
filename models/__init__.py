"""Pure computation for foundry3d: bundles, cameras, rasterisers, reconstruction, export, metrics.

Nothing here imports Prefect, a database client or an object-store client.
"""
