"""fm-agent: a policy service for vision-language-action models with future-aware attention."""

__version__ = "0.1.0"
