"""smlrec: retrain recommender systems period after period (SML and its baselines)."""

__version__ = "0.1.0"
