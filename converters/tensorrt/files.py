"""Atomic file writes for engines and caches: a build interrupted mid-write (Ctrl-C, a full disk,
a crash) leaves the previous file intact and no half-written engine or cache that a later run
would trust. The writers live in `runtime.atomic` (shared by every export); re-exported here."""
from __future__ import annotations

from runtime.atomic import atomic_write, atomic_write_bytes

__all__ = ["atomic_write", "atomic_write_bytes"]
