"""halluc-bench: audit how robustly an unlearning method removes object hallucination."""

__version__ = "0.1.0"
