"""Detector families; importing this package registers every family in `MODELS`."""
from edgedet.models.factory import create_model, create_model_from_config, default_config, list_models

# Each family module registers itself on import (one line per family).
from edgedet.models import detr  # noqa: F401,E402
from edgedet.models import deformable_detr  # noqa: F401,E402
from edgedet.models import dab_detr  # noqa: F401,E402
from edgedet.models import dino  # noqa: F401,E402
from edgedet.models import co_detr  # noqa: F401,E402
from edgedet.models import trex  # noqa: F401,E402
from edgedet.models import rtdetr  # noqa: F401,E402
from edgedet.models import dfine  # noqa: F401,E402
from edgedet.models import rfdetr  # noqa: F401,E402

__all__ = ["create_model", "create_model_from_config", "default_config", "list_models"]
