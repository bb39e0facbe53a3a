"""tokfilter: token-level filtering of LLM pretraining data."""

__version__ = "0.1.0"
