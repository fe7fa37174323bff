"""Model loading, architecture adapters and activation tracing."""

from .adapters import MLPOutputAdapter, find_mlp_output
from .loading import DEFAULT_MODEL, load_model, model_fingerprint

__all__ = ["MLPOutputAdapter", "find_mlp_output", "DEFAULT_MODEL", "load_model", "model_fingerprint"]
