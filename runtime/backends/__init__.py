"""Inference engines behind one `Backend` contract, chosen by name or artifact suffix."""
from runtime.backends.base import (
    BACKENDS,
    ArtifactError,
    Backend,
    BackendUnavailableError,
    InputError,
    TensorSpec,
    load_backend,
)

__all__ = ["BACKENDS", "ArtifactError", "Backend", "BackendUnavailableError", "InputError", "TensorSpec", "load_backend"]
