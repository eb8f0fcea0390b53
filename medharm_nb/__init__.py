"""medharm-nb: measure how LLMs fail on high-risk medical questions."""

__version__ = "0.1.0"
