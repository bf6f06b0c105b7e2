"""The machinery behind official-checkpoint configs: `FamilySpec`, its registry, shared helpers.

A `FamilySpec` says how one official repository's checkpoints map onto an edgedet model config:
the keys that identify them, the translation of the training `args` into our config fields, and
the same config inferred from tensor shapes for checkpoints without `args`. The specs themselves
live in `official_configs`. Helpers read the official key names (`backbone.0.body.*`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from torch import Tensor

from edgedet.registry import BACKBONES, Registry

State = Mapping[str, Tensor]
Args = Dict[str, Any]
OFFICIAL_FAMILIES = Registry("official checkpoint family")


class OfficialCheckpointError(ValueError):
    """An official checkpoint that cannot be turned into an edgedet model; says why and what to do."""


@dataclass(frozen=True)
class FamilySpec:
    name: str
    signature: str  # what identifies the family's checkpoints, for error messages
    matches: Callable[[State], bool]
    from_args: Callable[[Args, State], Dict[str, Any]]  # -> our config fields
    from_shapes: Callable[[State, int], Dict[str, Any]]  # (state, nheads) -> our config fields
    # Fields `from_shapes` reads reliably; args that disagree with the weights are reported.
    shape_fields: tuple = ("hidden_dim", "num_queries", "enc_layers", "dec_layers", "dim_feedforward")


# ---------------------------------------------------------------- shared helpers


def require(args: Args, key: str) -> Any:
    if key not in args:
        raise OfficialCheckpointError(f"the checkpoint's args lack '{key}'; re-save it with its full training args or without args")
    return args[key]


def hardcoded_num_classes(args: Args) -> int:
    """The class count DETR / Deformable-DETR / DAB-DETR's build functions hard-code."""
    dataset = args.get("dataset_file", "coco")
    return {"coco": 91, "coco_panoptic": 250}.get(dataset, 20)


def count_indexed(state: State, prefix: str) -> int:
    """Number of `prefix.{i}.` sub-modules (e.g. encoder layers)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in state for m in [pat.match(k)] if m}
    return max(idx) + 1 if idx else 0


def backbone_from_shapes(state: State) -> str:
    """ResNet depth from the block layout under `backbone.0.body` (layer3 has 2/6/6/23 blocks)."""
    n3 = count_indexed(state, "backbone.0.body.layer3")
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state
    name = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}.get((bottleneck, n3))
    if name is None:
        raise OfficialCheckpointError(
            f"cannot recognise the backbone under backbone.0.body ({n3} blocks in layer3); supported: {', '.join(BACKBONES.names())}"
        )
    return name


_POSITION_EMBEDDINGS = {"sine": "sine", "v2": "sine", "learned": "learned", "v3": "learned"}


def position_embedding_arg(args: Args, learned_ok: bool) -> str:
    """Official `position_embedding` arg -> our name (sine | learned)."""
    raw = args.get("position_embedding", "sine")
    kind = _POSITION_EMBEDDINGS.get(raw)
    if kind is None or (kind == "learned" and not learned_ok):
        raise OfficialCheckpointError(f"position_embedding '{raw}' is not supported for this family; edgedet implements 'sine' here")
    return kind


def check_common_args(args: Args, family: str, learned_ok: bool = False) -> None:
    """Reject recipes edgedet does not implement, naming the arg to change."""
    if args.get("masks"):
        raise OfficialCheckpointError(f"{family} checkpoint trained with masks=True (segmentation); edgedet builds detectors only")
    position_embedding_arg(args, learned_ok)
    backbone = require(args, "backbone")
    if backbone not in BACKBONES:
        raise OfficialCheckpointError(f"backbone '{backbone}' is not available; supported: {', '.join(BACKBONES.names())}")


# Official default used where shapes cannot tell (logged by the loader when args are absent).
DEFAULT_NHEADS = 8


def common_args(args: Args, family: str, learned_ok: bool = False) -> Dict[str, Any]:
    check_common_args(args, family, learned_ok)
    return {
        "backbone": args["backbone"],
        "hidden_dim": int(require(args, "hidden_dim")),
        "num_queries": int(require(args, "num_queries")),
        "aux_loss": bool(args.get("aux_loss", True)),
        "nheads": int(require(args, "nheads")),
        "enc_layers": int(require(args, "enc_layers")),
        "dec_layers": int(require(args, "dec_layers")),
        "dim_feedforward": int(require(args, "dim_feedforward")),
        "dropout": float(args.get("dropout", 0.1)),
        "dilation": bool(args.get("dilation", False)),
        "train_backbone": float(args.get("lr_backbone", 1e-5)) > 0,
    }


def common_shapes(state: State, proj_key: str) -> Dict[str, Any]:
    return {
        "backbone": backbone_from_shapes(state),
        "hidden_dim": int(state[proj_key].shape[0]),
        "enc_layers": count_indexed(state, "transformer.encoder.layers"),
        "dec_layers": count_indexed(state, "transformer.decoder.layers"),
        "dim_feedforward": int(state["transformer.encoder.layers.0.linear1.weight"].shape[0]),
    }


def has_fragment(state: State, fragment: str) -> bool:
    return any(fragment in k for k in state)


def family_names() -> List[str]:
    return OFFICIAL_FAMILIES.names()


def get_spec(name: str) -> FamilySpec:
    return OFFICIAL_FAMILIES.get(name)


def args_modelname(args: Optional[Args]) -> Optional[str]:
    """The family named by args (`modelname` in the DAB-DETR / DINO repositories), if any."""
    return None if not args else args.get("modelname")
