#!/usr/bin/env bash
# The test command: set-up, then the fast test suite (what CI runs). Every step runs even when an earlier
# one fails; the failed steps are listed at the end and the exit status is that of the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
FAILED=()
FIRST_RC=0
step() {  # step NAME COMMAND...: run it, remember a failure, go on
  local name=$1; shift
  "$@"
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "FAILED step: $name (exit $rc)" >&2
    FAILED+=("$name (exit $rc)")
    [ "$FIRST_RC" != 0 ] || FIRST_RC=$rc
  fi
  return 0
}
step "setup (scripts/setup.sh)" bash scripts/setup.sh
# The live web view's tests drive Debian's Chromium through its WebDriver; without them they skip, saying so.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
      || echo "WARNING: could not install chromium/chromium-driver; the browser tests will be skipped" >&2
  else
    echo "WARNING: chromium/chromium-driver missing (apt-get install chromium chromium-driver); the browser tests will be skipped" >&2
  fi
fi
# GStreamer capture as on a Jetson (tests/test_gstreamer_capture.py): Debian's GStreamer-enabled OpenCV and
# GStreamer plugins, seen from a `/usr/bin/python3 -m venv --system-site-packages` venv; without them those tests skip.
GST_PACKAGES="python3-opencv python3-gi python3-venv gir1.2-gstreamer-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-libav"
if ! /usr/bin/python3 -c "import cv2, gi; gi.require_version('Gst', '1.0')" >/dev/null 2>&1 || ! command -v gst-inspect-1.0 >/dev/null 2>&1 \
   || ! gst-inspect-1.0 avdec_h264 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $GST_PACKAGES) >/dev/null 2>&1 \
      || echo "WARNING: could not install $GST_PACKAGES; the GStreamer capture tests will be skipped" >&2
  else
    echo "WARNING: GStreamer / Debian's python3-opencv missing (apt-get install $GST_PACKAGES); the GStreamer capture tests will be skipped" >&2
  fi
fi
# The docs site (mkdocs.yml): the [docs] extra's pinned tools, then a strict build (a broken link, a missing
# page or an API name that does not resolve fails). tests/ runs the pages' code blocks and checks the CLI reference.
docs_build() {
  if ! python3 -c "import mkdocs, material, mkdocstrings_handlers.python" >/dev/null 2>&1; then
    python3 -m pip install -q --disable-pip-version-check -e ".[docs]" || return $?
  fi
  local site rc=0
  site=$(mktemp -d)
  NO_MKDOCS_2_WARNING=1 python3 -m mkdocs build --strict --quiet --site-dir "$site" || rc=$?
  rm -rf "$site"
  return "$rc"
}
step "docs site (mkdocs build --strict)" docs_build
step "fast test suite (pytest -m 'not slow')" python3 -m pytest -q -m "not slow" tests
# The runtime in a venv holding only the base install (no torch), on the oldest Python found (3.8 = JetPack 5's).
step "runtime base install (scripts/check_runtime_base_install.sh)" bash scripts/check_runtime_base_install.sh
# `edgedet benchmark --quick` on the embedded demo detector (the aim: under 3 minutes; its time is printed).
BENCH_DIR=$(mktemp -d)
SECONDS=0
step "edgedet benchmark --quick" timeout 600 edgedet benchmark --model edgedet/assets/demo_detector.pth --quick --imgsz 256 448 --project "$BENCH_DIR" --quiet
echo "edgedet benchmark --quick: ${SECONDS} s"
rm -rf "$BENCH_DIR"
# The aarch64 lane (qemu-user arm64 root) is opt-in, to keep this command under 30 minutes: a cached run takes
# 5-10 min on 2 shared cores, building the root ~30 min more. EDGEDET_ARM64_CHECK=1 runs it here (root cached or built).
if [ "${EDGEDET_ARM64_CHECK:-0}" = 1 ]; then
  arm64_lane() {
    local rc=0; bash scripts/arm64_check.sh || rc=$?
    [ "$rc" = 0 ] || [ "$rc" = 3 ] || return "$rc"  # 3: this machine cannot run qemu/debootstrap (said on one line)
  }
  step "aarch64 lane (scripts/arm64_check.sh)" arm64_lane
else
  echo "aarch64 lane not run (opt-in: EDGEDET_ARM64_CHECK=1 bash scripts/test.sh, or bash scripts/arm64_check.sh; 5-10 min with its root cached)"
fi
if [ "${#FAILED[@]}" != 0 ]; then
  echo "scripts/test.sh: ${#FAILED[@]} step(s) failed:" >&2
  printf '  - %s\n' "${FAILED[@]}" >&2
  exit "$FIRST_RC"
fi
echo "scripts/test.sh: every step passed"
