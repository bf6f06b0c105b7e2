"""Guards that keep a user's files safe (torch-free, so every command can use them).

- `refuse_output_over_input`: an output path that is, or resolves to (through links), an input or any
  file of a model artifact in use (`artifact_files`).
- `refuse_overwrite`: a file this call did not create, unless the user said it may be replaced.
- `check_writable_folder`: a clear one-line error before slow work when a folder cannot be written.
- `custom_op_library`: the custom-op library an artifact's manifest names, only as a bare file
  name inside the artifact's folder or a configured directory (never an arbitrary path).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

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


ARTIFACT_SUFFIXES = (".onnx", ".xml", ".engine", ".plan")
# Custom-op libraries an export copies beside its artifact (converters' OpenVINO and TensorRT builds).
KNOWN_LIBRARIES = ("libedgedet_ov_msda.so", "libedgedet_trt_msda.so")
EXTENSION_ENV = "EDGEDET_OV_EXTENSION"


def _model_files(artifact: Path) -> List[Path]:
    """An artifact file with its sidecars and weights (.xml -> .bin)."""
    from runtime.manifest import legacy_sidecar_path, sidecar_path

    files = [artifact, sidecar_path(artifact), legacy_sidecar_path(artifact)]
    if artifact.suffix == ".xml":
        files.append(artifact.with_suffix(".bin"))
    return files


def artifact_files(artifact: PathLike) -> List[Path]:
    """Every file a model in use reads: for an exported artifact (.onnx/.xml/.engine) itself, its sidecar
    manifests, OpenVINO weights (.bin), TensorRT caches, the custom-op libraries beside it or named by
    $EDGEDET_OV_EXTENSION, and what a prompted export's manifest names (text bank, text encoder, vocabulary);
    any other path (a checkpoint, a prompt file) is just itself. Outputs must never be any of them."""
    p = Path(artifact)
    if p.suffix.lower() not in ARTIFACT_SUFFIXES:
        return [p]
    files = _model_files(p)
    if p.suffix.lower() in (".engine", ".plan"):
        files += [p.with_suffix(".timing.cache"), p.with_suffix(".calib.cache")]
    named: List[str] = list(KNOWN_LIBRARIES)
    try:
        from runtime.manifest import read_sidecar

        manifest = read_sidecar(p)
    except (OSError, ValueError):  # a malformed manifest is reported when the model opens
        manifest = None
    if manifest is not None:
        named += [str(v) for v in manifest.custom_ops.values()]
        prompted = manifest.extra.get("prompted") if isinstance(manifest.extra, dict) else None
        if isinstance(prompted, dict):
            named += [str(prompted.get(k) or "") for k in ("text_bank", "text_encoder", "text_vocab")]
    for name in named:
        if name and Path(name).name == name:  # only bare names are ever loaded (custom_op_library)
            files += _model_files(p.parent / name) if Path(name).suffix in ARTIFACT_SUFFIXES else [p.parent / name]
    env = os.environ.get(EXTENSION_ENV, "")
    if env:
        files.append(Path(env) / KNOWN_LIBRARIES[0] if Path(env).is_dir() else Path(env))
    return files


def refuse_output_over_input(outputs: Iterable[Optional[PathLike]], inputs: Iterable[Optional[PathLike]],
                             what: str = "output") -> None:
    """Raise UnsafeOutputError when any output path is (or resolves to, through links) any input path or any
    file of a model artifact among the inputs (`artifact_files`: sidecar, weights, custom-op library...).

    Non-path inputs (camera indexes, URLs) and None are ignored. Call before opening anything.
    """
    ins = [Path(str(i)) for i in inputs if i is not None and not isinstance(i, int) and str(i).strip()]
    for out in outputs:
        if out is None or not str(out).strip():
            continue
        o = Path(str(out))
        for i in ins:
            for f in artifact_files(i):
                if _same_file(o, f):
                    whose = f"the input {i}" if f == i else f"{f.name}, a file of the model {i} in use"
                    raise UnsafeOutputError(f"{what} {out} is {whose}: it would be overwritten; "
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


__all__ = ["UnsafeOutputError", "artifact_files", "refuse_output_over_input", "refuse_overwrite", "check_writable_folder",
           "check_writable_file", "custom_op_library"]
