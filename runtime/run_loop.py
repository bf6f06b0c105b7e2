"""What `edgedet run` does with one stream and with several alike: check outputs first, then drive a
pipeline with a live progress line and print its summary (one loop for both, `drive`)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, List, Optional

from runtime.safety import check_writable_file, refuse_output_over_input


def check_outputs(outputs: List[Optional[str]], inputs: List[Any]) -> None:
    """Before opening anything: no output over an input (through links), every output writable."""
    refuse_output_over_input(outputs, inputs, what="output")
    for out in outputs:
        if out:
            check_writable_file(out)


def model_inputs(args: argparse.Namespace) -> List[Any]:
    """Every model file `run` reads (artifact, prompt encoder, saved prompts, a sources list): never an output."""
    return [args.model, getattr(args, "prompt_encoder", None), getattr(args, "prompts", None), getattr(args, "sources", None)]


def drive(pipeline: Any, detector: Any, progress: Callable[[int, Any], str], summary: Callable[[dict], str],
          max_frames: int = 0, quiet: bool = False, every_s: float = 0.5) -> int:
    """Iterate `pipeline` to its end (or `max_frames`, or Ctrl-C), refreshing `progress(n, result)` on stderr
    at most every `every_s`; close pipeline and detector; print `summary(stats)` -> exit code (130 if interrupted)."""
    interrupted, last = False, 0.0
    try:
        for n, result in enumerate(pipeline, 1):
            now = time.perf_counter()
            if not quiet and now - last > every_s:
                last = now
                print(f"\r{progress(n, result)}   ", end="", file=sys.stderr, flush=True)
            if max_frames and n >= max_frames:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        pipeline.close()
        detector.close()
    if not quiet:
        print(file=sys.stderr)
    print(summary(pipeline.stats()) + ("\n(interrupted)" if interrupted else ""))
    return 130 if interrupted else 0


__all__ = ["check_outputs", "model_inputs", "drive"]
