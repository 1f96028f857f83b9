"""reasonlm: teach small language models to reason step by step."""
__version__ = "0.1.0"
