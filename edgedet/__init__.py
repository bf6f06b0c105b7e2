"""edgedet: DETR-family detectors, from training to real-time edge deployment.

Training stack (torch). May import `runtime`'s data types and preprocessing; never `converters`.
"""
__version__ = "0.1.0"

from edgedet.models import create_model, create_model_from_config, list_models  # noqa: E402

__all__ = ["__version__", "create_model", "create_model_from_config", "list_models"]
