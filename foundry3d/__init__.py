"""foundry3d: the user's entry points (CLI, settings, HTTP API) over models/, storage/, tasks/ and flows/."""

__version__ = "0.1.0"
