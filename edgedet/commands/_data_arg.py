"""The `--data` argument shared by `edgedet train` and `edgedet eval`: 'synthetic' or a YAML file.

The YAML holds edgedet data-config keys (at top level or under `data:`), or is an Ultralytics
`data.yaml` (path / train / val / names), read as a YOLO dataset.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from edgedet.config import DataConfig, from_dict, read_yaml, to_dict

log = logging.getLogger(__name__)

DATA_HELP = ("'synthetic' (generated shapes), a YAML file holding a data config (keys of DataConfig: format, root, "
             "train_ann, val_ann, ..., at top level or under 'data:'), or an Ultralytics data.yaml (path, train, val, names)")
_PATH_KEYS = ("root", "train_ann", "val_ann")
_ULTRALYTICS_KEYS = {"path", "train", "val", "test", "names", "nc", "download"}


def is_ultralytics_data_yaml(raw: Dict[str, Any]) -> bool:
    """Ultralytics' dataset layout: `names` plus `train`/`val` image sources, and none of our own keys."""
    return "names" in raw and ("train" in raw or "val" in raw) and set(raw) <= _ULTRALYTICS_KEYS \
        and not isinstance(raw.get("train"), dict)


def _from_ultralytics(raw: Dict[str, Any], path: Path) -> Dict[str, Any]:
    names = raw["names"]
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names, key=int)]
    for key in ("train", "val"):
        if isinstance(raw.get(key), list):
            raise ValueError(f"{path}: '{key}' lists several sources; edgedet reads one folder or list file per split "
                             "(merge them into a .txt list of image paths)")
    root = Path(str(raw.get("path") or "."))
    root = root if root.is_absolute() else path.parent / root
    return {"format": "yolo", "root": str(root), "train_ann": str(raw.get("train") or ""),
            "val_ann": str(raw.get("val") or ""), "class_names": [str(n) for n in names]}


def parse_data_arg(value: str, base: Optional[DataConfig] = None, allow_sections: bool = False) -> DataConfig:
    """DataConfig from `--data`; relative paths inside a YAML file are taken relative to that file.

    An experiment YAML with `model:` or `train:` sections is refused (its sections would be silently
    dropped) unless `allow_sections` (eval: the checkpoint fixes model and training; only data is used).
    """
    base = base or DataConfig()
    if value == "synthetic":
        return from_dict(DataConfig, {**to_dict(base), "format": "synthetic"}, "data")
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"dataset config not found: {value}; pass 'synthetic' or a YAML file with a data config")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{value}: expected a mapping of data config keys")
    if is_ultralytics_data_yaml(raw):
        log.info("%s: Ultralytics data.yaml -> YOLO dataset", value)
        section = _from_ultralytics(raw, path)
        return from_dict(DataConfig, {**to_dict(base), **section}, "data")
    extra = [k for k in ("model", "train") if isinstance(raw.get(k), dict)]
    if extra and not allow_sections:
        raise ValueError(f"{value} holds {' and '.join(extra)} sections that --data does not apply; pass it as "
                         f"--config {value} (model, data and train sections; flags override it)")
    if extra:
        log.info("%s: using its data section (the checkpoint fixes %s)", value, " and ".join(extra))
    section = raw.get("data", raw) if isinstance(raw.get("data"), dict) else raw
    section = {k: v for k, v in section.items() if k not in ("model", "train")}
    for key in _PATH_KEYS:
        rel = section.get(key)
        if isinstance(rel, str) and rel and not Path(rel).is_absolute() and not Path(rel).exists():
            section[key] = str(path.parent / rel)
    return from_dict(DataConfig, {**to_dict(base), **section}, "data")


__all__ = ["parse_data_arg", "DATA_HELP", "is_ultralytics_data_yaml"]
