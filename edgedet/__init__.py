"""edgedet: DETR-family detectors, from training to real-time edge deployment.

Training stack (torch). May import `runtime`'s data types and preprocessing; never `converters`.
The model functions load on first use, so `edgedet` (the command) starts without torch.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "create_model_from_config", "list_models"]


def __getattr__(name):
    # Lazy: `edgedet --help` must not pay for importing torch (PEP 562).
    if name in ("create_model", "create_model_from_config", "list_models"):
        from edgedet import models

        return getattr(models, name)
    raise AttributeError(f"module 'edgedet' has no attribute {name!r}")
