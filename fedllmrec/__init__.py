"""fedllmrec: privacy-preserving, LLM-augmented, cross-domain federated recommendation."""

__version__ = "0.1.0"
