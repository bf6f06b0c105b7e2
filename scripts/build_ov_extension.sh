#!/usr/bin/env bash
# Builds converters/openvino/lib/libedgedet_ov_msda.so (fused MSDA op for OpenVINO).
# Usage: scripts/build_ov_extension.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m converters.openvino.extension "$@"
