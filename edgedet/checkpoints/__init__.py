"""Reading checkpoints from outside edgedet: official DETR-family repositories, safely.

`load_official(path, family=None, config=None, updates=())` builds the matching edgedet model and
loads the weights (config/updates: the released config and override strings of RT-DETRv2 / D-FINE /
DEIM files, which carry none; `fitting_configs` lists the released configs a file's shapes fit);
`safe_torch_load` is the `weights_only` reader every third-party file goes through.
(edgedet's own training checkpoints are `edgedet.engine.checkpoint`.)
"""
from edgedet.checkpoints.official import (
    config_for_checkpoint,
    convert_official,
    detect_family,
    load_official,
    read_official_checkpoint,
)
from edgedet.checkpoints.official_state_dict import load_official_state_dict
from edgedet.checkpoints.official_spec import OfficialCheckpointError, family_names
from edgedet.checkpoints.released_configs import MissingConfigError, fitting_configs
from edgedet.checkpoints.safe_load import UnsafeCheckpointError, safe_torch_load

__all__ = [
    "MissingConfigError",
    "OfficialCheckpointError",
    "UnsafeCheckpointError",
    "config_for_checkpoint",
    "convert_official",
    "detect_family",
    "family_names",
    "fitting_configs",
    "load_official",
    "load_official_state_dict",
    "read_official_checkpoint",
    "safe_torch_load",
]
