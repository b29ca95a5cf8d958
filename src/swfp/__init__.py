"""swfp: online RL fine-tuning of flow-matching robot policies with the Stepwise Flow Policy method."""

__version__ = "0.1.0"
