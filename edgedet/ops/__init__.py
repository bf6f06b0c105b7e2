"""Custom operators with several implementations selected by name."""
from edgedet.ops.msda import (
    level_start_index_from_shapes,
    multi_scale_deformable_attention,
    spatial_shapes_as_list,
)
from edgedet.ops import msda_gather  # noqa: F401  (registers the `gather` implementation)
from edgedet.ops import msda_cuda  # noqa: F401  (registers `cuda` and `auto`; builds nothing on import)
from edgedet.registry import MSDA_IMPLS


def list_msda_impls():
    """Names accepted by `multi_scale_deformable_attention(..., impl=...)`."""
    return MSDA_IMPLS.names()


__all__ = [
    "multi_scale_deformable_attention",
    "list_msda_impls",
    "spatial_shapes_as_list",
    "level_start_index_from_shapes",
]
