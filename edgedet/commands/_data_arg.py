"""The `--data` argument shared by `edgedet train` and `edgedet eval`: 'synthetic' or a YAML file.

The YAML holds edgedet data-config keys (at top level or under `data:`), or is an Ultralytics
`data.yaml` (path / train / val / test / names), read as a YOLO dataset. The YAML is read by
`runtime.annotations.spec.data_section_from_yaml`, which the runtime's `val` and `benchmark` use too.
"""
from __future__ import annotations

from typing import Optional

from edgedet.config import DataConfig, from_dict, to_dict
from runtime.annotations.spec import data_section_from_yaml
from runtime.annotations.yolo import is_ultralytics_data_yaml

DATA_HELP = ("'synthetic' (generated shapes), a YAML file holding a data config (keys of DataConfig: format, root, "
             "train_ann, val_ann, ..., at top level or under 'data:'), or an Ultralytics data.yaml (path, train, val, names)")


def parse_data_arg(value: str, base: Optional[DataConfig] = None, allow_sections: bool = False) -> DataConfig:
    """DataConfig from `--data`; relative paths inside a YAML file are taken relative to that file.

    An experiment YAML with `model:` or `train:` sections is refused (its sections would be silently
    dropped) unless `allow_sections` (eval: the checkpoint fixes model and training; only data is used).
    """
    base = base or DataConfig()
    if value == "synthetic":
        return from_dict(DataConfig, {**to_dict(base), "format": "synthetic"}, "data")
    section = data_section_from_yaml(value, allow_sections)
    return from_dict(DataConfig, {**to_dict(base), **section}, "data")


__all__ = ["parse_data_arg", "DATA_HELP", "is_ultralytics_data_yaml"]
