"""Name -> builder registries for models, backbones and MSDA implementations.

The only global mutable state in edgedet: registries filled at import time.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Dict, Iterator, List, Optional


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class Registry:
    """Maps a name to an object (usually a builder) plus free-form metadata."""

    def __init__(self, kind: str, filled_by: Optional[str] = None):
        self.kind = kind
        self._items: Dict[str, Any] = {}
        self._meta: Dict[str, Dict[str, Any]] = {}
        # The module whose import registers the entries: imported on first lookup, since `import edgedet`
        # stays lazy (the CLI's --help must not import torch).
        self._filled_by = filled_by

    def _fill(self) -> None:
        if self._filled_by:
            module, self._filled_by = self._filled_by, None
            importlib.import_module(module)

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            self._meta[name] = meta
            return obj

        return decorator

    def get(self, name: str) -> Any:
        self._fill()
        if name not in self._items:
            raise UnknownNameError(self._unknown_message(name))
        return self._items[name]

    def meta(self, name: str) -> Dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self) -> List[str]:
        self._fill()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._fill()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Valid names: {', '.join(self.names())}"


MODELS = Registry("model", filled_by="edgedet.models")
BACKBONES = Registry("backbone", filled_by="edgedet.nn.backbone")
MSDA_IMPLS = Registry("MSDA implementation", filled_by="edgedet.ops")
