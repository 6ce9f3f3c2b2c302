"""mstage: interaction logs to a running four-stage recommender."""

__version__ = "0.1.0"
