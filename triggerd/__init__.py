"""triggerd: decide when to retrain a model, and start the retraining.

Only public names and the version live here; nothing heavy is imported.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
