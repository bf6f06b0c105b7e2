#!/usr/bin/env bash
# The test command: set-up, then the fast test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m pytest -q -m "not slow" tests
