"""Loading a state_dict with the official repositories' key names into our model, strictly.

The few keys whose layout differs are renamed (`backbone.0.body.` -> `backbone.body.`), half tensors
are cast to float32, tied tensors load whichever way they are tied, and whatever does not fit is
reported grouped by module. Shared by every family's loader (`official`, `dfine_official`,
`rfdetr_official`) and by fine-tuning.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor, nn

from edgedet.checkpoints.official_spec import OfficialCheckpointError

# Official key prefix -> ours: every official repo wraps (backbone, position embedding) in a
# Joiner (nn.Sequential), so they sit at indices 0 and 1.
KEY_RENAMES = (("backbone.0.body.", "backbone.body."), ("backbone.1.", "position_embedding."))
_HALF = (torch.float16, torch.bfloat16)


def alias_groups(state: Mapping[str, Tensor]) -> Dict[str, List[str]]:
    """key -> every key holding the very same tensor view (tied modules saved under several names)."""
    by_view: Dict[tuple, List[str]] = {}
    for k, v in state.items():
        if v.numel() == 0:  # empty tensors may all report data_ptr 0: never aliases
            by_view.setdefault(("empty", k), []).append(k)
            continue
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        by_view.setdefault(ident, []).append(k)
    return {k: keys for keys in by_view.values() for k in keys}


def group_keys(keys: List[str]) -> str:
    """Keys grouped by module, layer indices collapsed to '#':
    ['a.0.x.weight', 'a.1.x.weight', 'a.1.x.bias'] -> 'a.#.x [# = 0 | 1]: weight, bias'."""
    groups: "OrderedDict[str, Tuple[List[str], List[str]]]" = OrderedDict()
    for key in keys:
        module, _, leaf = key.rpartition(".")
        pattern = re.sub(r"\.\d+(?=\.|$)", ".#", module) if module else "(top level)"
        idx = ",".join(re.findall(r"\.(\d+)(?=\.|$)", module))
        leaves, indices = groups.setdefault(pattern, ([], []))
        if leaf not in leaves:
            leaves.append(leaf)
        if idx and idx not in indices:
            indices.append(idx)
    parts = []
    for pattern, (leaves, indices) in groups.items():
        where = f" [# = {' | '.join(indices)}]" if indices else ""
        parts.append(f"{pattern}{where}: {', '.join(leaves)}")
    return "; ".join(parts)


def convert_official_state_dict(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Official key names -> ours, half tensors -> float32 (aliases are kept as separate keys)."""
    return {_renamed(k): (t.float() if t.dtype in _HALF else t) for k, t in state.items()}


def _renamed(key: str) -> str:
    for old, new in KEY_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_official_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load an official state_dict (official key names) into `model`, strictly.

    Tied tensors load whichever way they are tied: a checkpoint alias the model lacks is
    accepted when it is the same tensor as a key the model has, and a model alias the
    checkpoint lacks is filled from its twin. Anything else missing, unexpected or of
    another shape raises OfficialCheckpointError listing the keys grouped by module.
    """
    aliases = {_renamed(k): [_renamed(a) for a in v] for k, v in alias_groups(state).items()}
    ours = convert_official_state_dict(state)
    own = model.state_dict(keep_vars=True)
    own_twins: Dict[int, List[str]] = {}
    for k, v in own.items():
        own_twins.setdefault(id(v), []).append(k)

    missing = []
    for k in own:
        if k in ours:
            continue
        twin = next((t for t in own_twins[id(own[k])] if t in ours), None)
        if twin is None:
            missing.append(k)
        else:
            ours[k] = ours[twin]
    # BatchNorm step counters carry no weights; a model with frozen norms has no slot for them.
    unexpected = [k for k in ours if k not in own and not any(a in own for a in aliases.get(k, []))
                  and not k.endswith(".num_batches_tracked")]
    shape = [k for k in own if k in ours and ours[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model keys missing from the checkpoint: {group_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint keys the model does not have: {group_keys(unexpected)}")
        if shape:
            first = shape[0]
            parts.append(f"{len(shape)} tensors with another shape (e.g. {first}: checkpoint {list(ours[first].shape)}, "
                         f"model {list(own[first].shape)}): {group_keys(shape)}")
        raise OfficialCheckpointError(f"{source} does not fit the {type(model).__name__} model: {' | '.join(parts)}")
    model.load_state_dict({k: ours[k] for k in own}, strict=True)
