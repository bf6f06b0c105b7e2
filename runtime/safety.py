"""Guards that keep a user's files safe (torch-free, so every command can use them).

- `refuse_output_over_input`: an output path that is, or resolves to (through links), an input.
- `refuse_overwrite`: a file this call did not create, unless the user said it may be replaced.
- `check_writable_folder`: a clear one-line error before slow work when a folder cannot be written.
- `custom_op_library`: the custom-op library an artifact's manifest names, only as a bare file
  name inside the artifact's folder or a configured directory (never an arbitrary path).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

PathLike = Union[str, Path]


class UnsafeOutputError(ValueError):
    """An output that would destroy an input or a file the user did not ask to replace."""


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        try:
            return os.path.samefile(a, b)  # catches hard links too
        except OSError:
            pass
    return a.resolve() == b.resolve()


def refuse_output_over_input(outputs: Iterable[Optional[PathLike]], inputs: Iterable[Optional[PathLike]],
                             what: str = "output") -> None:
    """Raise UnsafeOutputError when any output path is (or resolves to) any input path.

    Non-path inputs (camera indexes, URLs) and None are ignored. Call before opening anything.
    """
    ins = [Path(str(i)) for i in inputs if i is not None and not isinstance(i, int) and str(i).strip()]
    for out in outputs:
        if out is None or not str(out).strip():
            continue
        o = Path(str(out))
        for i in ins:
            if _same_file(o, i):
                raise UnsafeOutputError(f"{what} {out} is the input {i}: it would be overwritten; "
                                        "write the result to another path")


def refuse_overwrite(path: PathLike, exist_ok: bool, flag: str = "--exist-ok / overwrite=True") -> None:
    """Raise UnsafeOutputError when `path` exists and replacing it was not asked for."""
    p = Path(path)
    if p.exists() and not exist_ok:
        raise UnsafeOutputError(f"{p} already exists; choose another output path, or pass {flag} to replace it")


def _probe_folder(folder: Path) -> Optional[str]:
    """None if a file can be created in `folder`, else the reason (tried for real: root ignores modes)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgedet-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return None
    except OSError as e:
        return e.strerror or str(e)


def check_writable_folder(folder: PathLike, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove a file can be written there; one-line error otherwise."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise UnsafeOutputError(f"{what} {p} is a file, not a folder; pass a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create {what} {p} ({e.strerror or e}); choose a writable folder") from None
    reason = _probe_folder(p)
    if reason:
        raise PermissionError(f"cannot write to {what} {p} ({reason}); choose a writable folder")
    return p


def check_writable_file(path: PathLike, what: str = "output") -> Path:
    """`path` (a file or folder to write) can be written: its nearest existing folder accepts a new
    file. Checked before slow work, so a read-only place fails in one line, not mid-run."""
    p = Path(path)
    folder = p if p.is_dir() else next((a for a in p.absolute().parents if a.is_dir()), Path("/"))
    reason = _probe_folder(folder)
    if reason is None and p.is_file() and not os.access(p, os.W_OK):
        reason = "the file is read-only"
    if reason:
        raise PermissionError(f"cannot write {what} {p}: {folder} is not writable ({reason}); choose a writable location")
    return p


def custom_op_library(name: str, artifact: PathLike, extra_dirs: Sequence[PathLike] = (), what: str = "custom-op library") -> Optional[Path]:
    """Resolve the library file `name` an artifact's manifest asks for.

    Only a bare file name is accepted, looked up in the artifact's folder and then in
    `extra_dirs` (directories the user configured); the result must stay inside that folder
    after resolving links. Anything else is refused before anything is loaded.
    Returns None when no candidate exists (the caller says where to get it).
    """
    if not name:
        return None
    if name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name or os.path.isabs(name):
        raise UnsafeOutputError(f"the manifest of {Path(artifact).name} names the {what} '{name}': only a bare file "
                                "name inside the artifact's folder is allowed; re-export the artifact")
    folders = [Path(artifact).parent, *[Path(d) for d in extra_dirs]]
    allowed = {f.resolve() for f in folders}
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            if candidate.resolve().parent not in allowed:  # a link planted beside the artifact
                raise UnsafeOutputError(f"{candidate} links outside {folder}; copy the real {what} there instead")
            return candidate
    return None


__all__ = ["UnsafeOutputError", "refuse_output_over_input", "refuse_overwrite", "check_writable_folder",
           "check_writable_file", "custom_op_library"]
