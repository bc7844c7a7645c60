"""foundry3d: the user's entry points (CLI, settings) over models/, storage/, tasks/, flows/."""

__version__ = "0.1.0"
