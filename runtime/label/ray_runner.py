"""Labelling (and predicting) at scale on Ray Data: the sources are a Ray dataset, the detectors an actor pool.

    image files   -> ray.data.read_binary_files (local paths, globs expanded by us; any filesystem Ray reads)
    video ranges  -> ray.data.from_items, one row per frame range (`sources.VIDEO_CHUNK` frames)
    both          -> map_batches(EngineActor, concurrency=N): one engine per actor, built from an EngineSpec;
                     a video row is decoded by the actor that labels it, so frames never cross the network raw
    results       -> iterated on the driver, which writes the same files as the single-process run

No scheduler, queue or protocol of ours: Ray places the actors, streams the blocks and retries failed
tasks. Without an address (`local`) a small local cluster starts (2 CPUs, no dashboard) and is shut down
at the end; with one (`auto`, `ray://head:10001`, `head:6379`) the run joins that cluster, whose workers
must see the model files and the sources at the same paths (shared storage) and have edgedet installed.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np

from runtime.label.sources import WorkUnit, read_unit

LOCAL = "local"
LOCAL_CPUS = 2  # the local cluster: small, beside everything else on the machine
MIN_RANGE = 4  # frames: shorter video ranges cost more in seeking than they gain in spreading


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"--ray needs Ray Data ({e}): pip install 'edgedet[ray]'") from None
    return ray


@contextmanager
def ray_cluster(address: str) -> Iterator[Any]:
    """A connection to `address`, or a local cluster started here (and stopped at the end) for `local`."""
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours (tqdm) counts images
    for name in ("ray.data", "ray"):  # Ray Data's per-run INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():  # a caller's own session: use it, leave it running
        yield ray
        return
    if address == LOCAL:
        ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False)
    else:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def actor_cpus(ray: Any, actors: int) -> float:
    """CPUs each actor reserves: one, or a share that leaves one CPU free for Ray Data's read and map tasks
    (actors holding every CPU would starve the tasks that feed them: the pool would wait forever)."""
    total = float(ray.cluster_resources().get("CPU", 1.0))
    return round(min(1.0, max(0.1, (total - 1.0) / actors)), 2)


class EngineActor:
    """A Ray Data callable class: builds one engine from `build()` and runs it on each batch of rows.

    Rows carry either an image file's `bytes` (and `names` = [its name]) or a video frame range
    (`frames`, `names`) to decode here. `run(engine, image)` -> a JSON-able dict per image."""

    def __init__(self, build: Callable[[], Any], run: Callable[[Any, np.ndarray], Dict[str, Any]], keep_bytes: bool):
        self.engine = build()
        self.run, self.keep_bytes = run, keep_bytes

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, List[Any]]:
        import cv2

        out: Dict[str, List[Any]] = {"name": [], "data": [], "suffix": [], "source": [], "result": []}

        def emit(name: str, image: np.ndarray, data: bytes, suffix: str, source: str) -> None:
            out["name"].append(name)
            out["data"].append(data if self.keep_bytes else b"")
            out["suffix"].append(suffix)
            out["source"].append(source)
            out["result"].append(json.dumps(self.run(self.engine, image)))

        for i in range(len(batch["path"])):
            path, names = str(batch["path"][i]), [str(n) for n in batch["names"][i]]
            frames = [int(f) for f in batch["frames"][i]]
            if frames and frames[0] >= 0:  # a video frame range ([-1]: an image file)
                for item in read_unit(WorkUnit(path, names, frames), warn=lambda text: None):
                    emit(item.name, item.image, item.data, item.suffix, item.source)
                continue
            data = bytes(batch["bytes"][i])
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:  # reported by the driver, as the single-process run reports it
                out["name"].append(names[0])
                out["data"].append(b"")
                out["suffix"].append(Path(path).suffix.lower())
                out["source"].append(path)
                out["result"].append("null")
            else:
                emit(names[0], image, data, Path(path).suffix.lower(), path)
        return out


def split_for_pool(units: Sequence[WorkUnit], actors: int, per_actor: int = 4) -> List[WorkUnit]:
    """Video ranges cut so every actor gets several (a short clip would otherwise be one range, one actor)."""
    frames = sum(len(u.names) for u in units if u.is_video)
    size = max(MIN_RANGE, -(-frames // (actors * per_actor))) if frames else 1
    out: List[WorkUnit] = []
    for u in units:
        if not u.is_video:
            out.append(u)
            continue
        out += [WorkUnit(u.path, u.names[s:s + size], u.frames[s:s + size]) for s in range(0, len(u.names), size)]
    return out


def source_dataset(ray: Any, units: Sequence[WorkUnit]) -> Any:
    """The Ray dataset of `units`: image files read by Ray Data, video frame ranges as items."""
    parts = []
    images = [u for u in units if not u.is_video]
    if images:
        name_of = {str(Path(u.path).resolve()): u.names[0] for u in images}
        files = ray.data.read_binary_files(sorted(name_of), include_paths=True)

        def with_names(row: Dict[str, Any]) -> Dict[str, Any]:
            path = str(Path(row["path"]).resolve())
            return {"path": path, "bytes": row["bytes"], "names": [name_of[path]], "frames": [-1]}

        parts.append(files.map(with_names))
    videos = [u for u in units if u.is_video]
    if videos:
        parts.append(ray.data.from_items([{"path": u.path, "bytes": b"", "names": u.names, "frames": u.frames}
                                          for u in videos], override_num_blocks=len(videos)))  # a range per block
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    return ds


def run_pool(address: str, units: Sequence[WorkUnit], build: Callable[[], Any], run: Callable[[Any, np.ndarray], Dict[str, Any]],
             actors: int, batch_size: int, keep_bytes: bool) -> Iterator[Dict[str, Any]]:
    """Yield {"name", "data", "suffix", "source", "result"} per image, in whatever order the pool finishes."""
    with ray_cluster(address) as ray:
        cpus = actor_cpus(ray, actors)
        ds = source_dataset(ray, split_for_pool(units, actors)).map_batches(
            EngineActor, fn_constructor_args=(build, run, keep_bytes), compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            batch_size=max(1, batch_size), batch_format="numpy")
        for row in ds.iter_rows():
            yield {"name": row["name"], "data": row["data"], "suffix": row["suffix"], "source": row["source"],
                   "result": json.loads(row["result"])}


def detections_record(engine: Any, image: np.ndarray) -> Dict[str, Any]:
    """Run `engine` on one image -> its Detections as a JSON-able dict (with the engine's ms)."""
    t0 = time.perf_counter()
    dets = engine(image)
    return {"boxes": dets.boxes_xyxy.tolist(), "scores": dets.scores.tolist(), "labels": dets.labels.tolist(),
            "size": list(dets.image_size), "names": list(dets.class_names), "ms": (time.perf_counter() - t0) * 1e3,
            "timings_ms": dict(dets.timings_ms)}


def detections_from_record(r: Dict[str, Any]) -> Any:
    from runtime.types import Detections

    return Detections(np.asarray(r["boxes"], np.float32).reshape(-1, 4), np.asarray(r["scores"], np.float32),
                      np.asarray(r["labels"], np.int64), tuple(r["names"]), tuple(r["size"]), dict(r.get("timings_ms") or {}))


def run_on_ray(spec: Any, todo: Sequence[WorkUnit], dataset: Any, address: str, actors: int, quiet: bool) -> Dict[str, int]:
    """`label()`'s Ray path: the same dataset.add() calls as the single-process loop, fed by the actor pool."""
    from tqdm import tqdm

    total = sum(len(u.names) for u in todo)
    done = 0
    if total:
        batch = int(spec.batch_size())
        with tqdm(total=total, desc="label (ray)", unit="img", disable=quiet or None) as bar:
            build = functools.partial(spec.build, threads=1)  # one engine per actor, one thread per engine
            for row in run_pool(address, todo, build, detections_record, actors, batch, keep_bytes=True):
                bar.update(1)
                if row["result"] is None:
                    bar.write(f"skip {row['source']}: OpenCV cannot decode it (corrupt or not an image)")
                    continue
                dataset.add(row["name"], row["data"], row["suffix"], row["source"], detections_from_record(row["result"]))
                done += 1
    return {"images": done, "skipped": total - done}


__all__ = ["run_on_ray", "run_pool", "detections_record", "detections_from_record", "split_for_pool", "ray_cluster", "import_ray", "EngineActor", "LOCAL"]
