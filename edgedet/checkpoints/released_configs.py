"""Families whose official checkpoints carry no config: their released configs, and which ones fit a file.

RT-DETRv2, D-FINE and DEIM save bare weights; the user names the released config the model was
built from (`--config NAME`) plus the official tools' override strings (`--update KEY=VALUE`).
Each such family registers a `ReleasedFamily` here (another family plugs in the same way).

`fitting_configs(family, state)` answers "which released configs fit these weights?": for every
distinct released architecture it derives the updates the tensors show (widths, layer counts,
points, classes, ...), builds that model on the meta device (no memory, no init cost) and keeps
the configs whose state_dict shapes then equal the checkpoint's, fewest updates first. So every
command it suggests has been checked against the weights' shapes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from edgedet.checkpoints.official_spec import OfficialCheckpointError
from edgedet.registry import Registry

State = Mapping[str, Tensor]
RELEASED_FAMILIES = Registry("released-config family")
# Buffers derived from the input size (checked through eval_spatial_size) and BatchNorm counters.
_SKIP_SHAPES = re.compile(r"(^|\.)(anchors|valid_mask|num_batches_tracked)$")


@dataclass(frozen=True)
class ReleasedFamily:
    family: str  # our model family (MODELS name)
    title: str  # as users know it, for messages
    names: Callable[[], List[str]]  # every released config name accepted by --config
    candidates: Callable[[], List[str]]  # one name per distinct architecture (what fitting compares)
    owns: Callable[[str], bool]  # whether a --config value names one of ours
    model_config: Callable[[str, Sequence[str]], Any]  # (name, updates) -> our ModelConfig
    prepare_state: Callable[[Dict[str, Tensor]], Dict[str, Tensor]]  # official state -> what our model loads
    suggest_updates: Callable[[str, State], List[str]]  # --update strings the weights show for config `name`
    hidden: str  # settings the weights cannot show (said with every suggestion)


def released_family_names() -> List[str]:
    return RELEASED_FAMILIES.names()


def released_family(family: str) -> ReleasedFamily:
    return RELEASED_FAMILIES.get(family)


def family_of_config(name: str) -> Optional[str]:
    """The family whose released config `name` is (None when no family claims it)."""
    for fam in RELEASED_FAMILIES.names():
        if RELEASED_FAMILIES.get(fam).owns(name):
            return fam
    return None


def all_released_config_names() -> List[str]:
    return [n for fam in RELEASED_FAMILIES.names() for n in RELEASED_FAMILIES.get(fam).names()]


def shape_mismatches(model_cfg: Any, state: State) -> List[str]:
    """Keys whose presence or shape differs between the model `model_cfg` builds and `state` (meta device)."""
    from edgedet.models import create_model_from_config

    with torch.device("meta"):
        model = create_model_from_config(model_cfg)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not _SKIP_SHAPES.search(k)}
    theirs = {k: tuple(v.shape) for k, v in state.items() if not _SKIP_SHAPES.search(k)}
    return sorted(k for k in set(own) | set(theirs) if own.get(k) != theirs.get(k))


def fitting_configs(family: str, state: State, limit: int = 3) -> Tuple[List[Tuple[str, List[str]]], str]:
    """-> ([(config name, --update strings)] whose model fits `state`'s shapes, fewest updates first;
    a note on the closest config when none fits)."""
    spec = RELEASED_FAMILIES.get(family)
    prepared = spec.prepare_state(dict(state))
    fits, closest, seen = [], None, []
    for name in spec.candidates():
        try:
            updates = spec.suggest_updates(name, prepared)
            cfg = spec.model_config(name, updates)
            wrong = shape_mismatches(cfg, prepared)
        except (OfficialCheckpointError, ValueError, KeyError, RuntimeError):
            continue  # the weights cannot be expressed as this config (another backbone layout, ...)
        if not wrong:
            if cfg not in seen:  # a config that updates turn into an earlier one adds nothing
                seen.append(cfg)
                fits.append((name, updates))
        elif closest is None or len(wrong) < closest[1]:
            closest = (name, len(wrong), wrong[0])
    fits.sort(key=lambda f: len(f[1]))
    note = "" if fits or closest is None else (f"closest: {closest[0]} ({closest[1]} tensors of another shape or "
                                               f"missing, e.g. {closest[2]})")
    return fits[:limit], note


def command_for(template: str, name: str, updates: Sequence[str]) -> str:
    """`template` with {config} replaced by `--config NAME --update ...` (values quoted for a shell when needed)."""
    flags = [f"--config {name}"] + [f"--update {_quoted(u)}" for u in updates]
    return template.format(config=" ".join(flags))


def _quoted(item: str) -> str:
    return f"'{item}'" if any(c in item for c in "[]~ *?") else item


class MissingConfigError(OfficialCheckpointError):
    """A checkpoint of a family that carries no config, loaded without --config: says which released
    configs fit and the command to run. `message(template)` rewrites it for another command."""

    def __init__(self, path: str, family: str, fits: List[Tuple[str, List[str]]], note: str):
        self.path, self.family, self.fits, self.note = path, family, fits, note
        super().__init__(self.message(f"edgedet train --weights {path} {{config}} --data DATA"))

    def fits_text(self) -> str:
        """'released configs whose shapes fit these weights: NAME --update ...; ...' (or why none does)."""
        spec = RELEASED_FAMILIES.get(self.family)
        if not self.fits:
            return (f"no released {spec.title} config fits its tensor shapes{' (' + self.note + ')' if self.note else ''}; "
                    f"released: {', '.join(spec.names())}")
        return "released configs whose shapes fit these weights: " + "; ".join(
            n + "".join(f" --update {_quoted(u)}" for u in ups) for n, ups in self.fits)

    def message(self, template: str) -> str:
        spec = RELEASED_FAMILIES.get(self.family)
        head = (f"{self.path} is {article(spec.title)} {spec.title} checkpoint, which carries no config: name the "
                "released config with --config NAME "
                "(and --update KEY=VALUE for what was changed)")
        if not self.fits:
            return f"{head}; {self.fits_text()}"
        return (f"{head}; {self.fits_text()}. Run: {command_for(template, *self.fits[0])} (the weights cannot show "
                f"{spec.hidden}: add --update for those if they were changed)")


def article(title: str) -> str:
    """'a' or 'an' before a family title as it is read aloud (an RT-DETRv2, a D-FINE)."""
    return "an" if title[:1].upper() in "AEFHILMNORSX" else "a"


def missing_config(path: str, family: str, state: State) -> MissingConfigError:
    fits, note = fitting_configs(family, state)
    return MissingConfigError(str(path), family, fits, note)


__all__ = ["ReleasedFamily", "RELEASED_FAMILIES", "MissingConfigError", "released_family", "released_family_names",
           "family_of_config", "all_released_config_names", "fitting_configs", "shape_mismatches", "missing_config",
           "command_for", "article"]
