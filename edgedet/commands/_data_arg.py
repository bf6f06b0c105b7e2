"""The `--data` argument shared by `edgedet train` and `edgedet eval`: 'synthetic' or a YAML file."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgedet.config import DataConfig, from_dict, read_yaml, to_dict

DATA_HELP = ("'synthetic' (generated shapes) or a YAML file holding a data config, either at top level or under "
             "a 'data:' section (keys of DataConfig: format, root, train_ann, val_ann, ...)")
_PATH_KEYS = ("root", "train_ann", "val_ann")


def parse_data_arg(value: str, base: Optional[DataConfig] = None) -> DataConfig:
    """DataConfig from `--data`; relative paths inside a YAML file are taken relative to that file."""
    base = base or DataConfig()
    if value == "synthetic":
        return from_dict(DataConfig, {**to_dict(base), "format": "synthetic"}, "data")
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"dataset config not found: {value}; pass 'synthetic' or a YAML file with a data config")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{value}: expected a mapping of data config keys")
    section = raw.get("data", raw) if isinstance(raw.get("data"), dict) else raw
    section = {k: v for k, v in section.items() if k not in ("model", "train")}
    for key in _PATH_KEYS:
        rel = section.get(key)
        if isinstance(rel, str) and rel and not Path(rel).is_absolute() and not Path(rel).exists():
            section[key] = str(path.parent / rel)
    return from_dict(DataConfig, {**to_dict(base), **section}, "data")


__all__ = ["parse_data_arg", "DATA_HELP"]
