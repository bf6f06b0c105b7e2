#!/usr/bin/env bash
# The test command: set-up, then the fast test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q -m "not slow" tests
# The runtime in a venv holding only the base install (no torch).
bash scripts/check_runtime_base_install.sh
# `edgedet benchmark --quick` on the embedded demo detector must finish within 3 minutes.
BENCH_DIR=$(mktemp -d)
timeout 180 edgedet benchmark --model edgedet/assets/demo_detector.pth --quick --imgsz 256 448 --project "$BENCH_DIR" --quiet
rm -rf "$BENCH_DIR"
