#!/usr/bin/env bash
# The aarch64 lane: the runtime on a Debian bookworm arm64 root run by qemu-user-static (as root).
#  1. builds the root once with debootstrap (cached outside the repository, $EDGEDET_ARM64_ROOT, default
#     ~/.cache/edgedet/arm64-root) and installs the base runtime there from aarch64 wheels (in a venv);
#  2. builds the fused OpenVINO MSDA extension for aarch64 there (CMake against the aarch64 openvino wheel);
#  3. runs the runtime's torch-free tests there;
#  4. exports the demo detector on x86 (ONNX grid_sample, OpenVINO gather, OpenVINO fused; cached) and
#     compares its aarch64 outputs with x86's (scores <= 1e-4) under two qemu CPU models: `max,sve=off`
#     (qemu's default with FP16/BF16 arithmetic but, like a Jetson Orin's Cortex-A78AE, no SVE) and
#     `cortex-a72` (no FP16). Plain `max` adds 512-bit SVE, on which OpenVINO's CPU plugin (all layers
#     f32) differs from x86 by up to 0.7 in score: EDGEDET_ARM64_CPUS="max" shows it (docs/jetson.md, aarch64 row).
# Last line: `arm64: N passed, M failed` (tests + parity checks) and the parity figures.
# Exit status: 0 all passed, 1 something failed, 3 this machine cannot run it (the reason on one line).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${EDGEDET_ARM64_CACHE:-$HOME/.cache/edgedet}
ROOT=${EDGEDET_ARM64_ROOT:-$CACHE/arm64-root}
CPU_MODELS=${EDGEDET_ARM64_CPUS:-"max,sve=off cortex-a72"}
PY=${PYTHON:-python3}
# The base runtime (setup.py's RUNTIME) plus openvino at the host's version (it reads the host's IR and
# the extension is built against it), and what the tests need (onnx writes their artifacts).
OV_VERSION=$("$PY" -c "import openvino; print(openvino.__version__.split('-')[0])" 2>/dev/null) \
  || skip "the host needs the full install (python3 with torch and openvino) to export the parity artifacts"
PACKAGES="numpy opencv-python-headless onnxruntime openvino==$OV_VERSION pyyaml tqdm lap pycocotools pytest onnx"
# Torch-free test files: they import only runtime (tests/test_runtime_torchfree.py checks that path).
TESTS="tests/test_runtime_backends.py tests/test_runtime_capture.py tests/test_runtime_cli.py
  tests/test_runtime_detector.py tests/test_runtime_draw.py tests/test_runtime_pipeline.py
  tests/test_runtime_postprocess.py tests/test_runtime_save.py tests/test_runtime_torchfree.py
  tests/test_draw_labels.py tests/test_multistream.py tests/test_reliability_runtime.py tests/test_tensorrt_backend.py"
# Wall-clock budgets that only a native CPU meets (qemu runs the code 10-50x slower).
DESELECT="--deselect tests/test_multistream.py::test_dead_live_stream_does_not_stall_the_others"
skip() { echo "arm64: skipped: $*"; exit 3; }
log() { echo "[arm64 $(date +%H:%M:%S)] $*"; }
SECONDS=0

# --- qemu-user-static, debootstrap and the aarch64 binfmt_misc handler -------------------------------
[ "$(uname -m)" = x86_64 ] || skip "runs on an x86_64 host (this is $(uname -m))"
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot, binfmt_misc)"
if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  command -v apt-get >/dev/null || skip "needs debootstrap and qemu-user-static (apt-get install debootstrap qemu-user-static)"
  log "installing debootstrap and qemu-user-static"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static) >/dev/null 2>&1 \
    || skip "apt-get install debootstrap qemu-user-static failed"
fi
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e $BINFMT/register ]; then
  mount -t binfmt_misc binfmt_misc $BINFMT 2>/dev/null || skip "cannot mount binfmt_misc (a container without that privilege)"
fi
if [ ! -e $BINFMT/qemu-aarch64 ]; then
  # Debian's entry has flag F: the kernel opens the interpreter now, so the root needs no copy of it.
  CONF=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -f $CONF ] || skip "$CONF missing (qemu-user-static too old?)"
  cat $CONF > $BINFMT/register 2>/dev/null || skip "cannot register the qemu-aarch64 binfmt_misc handler"
fi
grep -q '^enabled' $BINFMT/qemu-aarch64 || skip "the qemu-aarch64 binfmt_misc handler is disabled ($BINFMT/qemu-aarch64)"
QEMU_VERSION=$(qemu-aarch64-static --version | head -1 | awk '{print $3}')

# --- the root (built once; the venv is rebuilt when the package list changes) -----------------------
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  log "building the Debian bookworm arm64 root in $ROOT (debootstrap, several minutes)"
  rm -rf "$ROOT.partial" && mkdir -p "$(dirname "$ROOT")"
  nice -n 10 debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-dev,cmake,g++,make,ca-certificates \
    bookworm "$ROOT.partial" http://deb.debian.org/debian > "$CACHE/arm64-debootstrap.log" 2>&1 \
    || { echo "debootstrap failed; the end of $CACHE/arm64-debootstrap.log:"; tail -5 "$CACHE/arm64-debootstrap.log"; exit 1; }
  mv "$ROOT.partial" "$ROOT"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

# Runs a command inside the root (qemu CPU model $QEMU_CPU, default `max`), in a private mount namespace
# whose mounts vanish with it. qemu-user 7.2 shows aarch64 programs the host's x86 /proc/cpuinfo;
# ONNX Runtime >= 1.28 segfaults on import when that file lists no ARM processor, so the root gets
# an ARM one: the emulated CPU's MIDR (read by /opt/midr) for each of the host's processors.
in_root() {
  local cpuinfo="$ROOT/etc/cpuinfo-${QEMU_CPU:-max}"
  if [ ! -s "$cpuinfo" ]; then
    : > "$cpuinfo"
    if [ -x "$ROOT/opt/midr" ]; then
      local m n i
      m=$((16#$(chroot "$ROOT" /opt/midr))); n=$(nproc)
      for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nCPU implementer\t: 0x%02x\nCPU architecture: 8\nCPU variant\t: 0x%x\nCPU part\t: 0x%03x\nCPU revision\t: %d\n\n' \
          $i $(((m >> 24) & 255)) $(((m >> 20) & 15)) $(((m >> 4) & 4095)) $((m & 15)) >> "$cpuinfo"
      done
    fi
  fi
  nice -n 10 unshare --mount --propagation private -- bash -c '
    root=$1; cpuinfo=$2; shift 2
    mkdir -p "$root/dev/shm"
    mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && mount -t tmpfs tmpfs "$root/dev/shm" \
      && mount -t tmpfs tmpfs "$root/tmp" || exit 1
    [ -s "$cpuinfo" ] && mount --bind "$cpuinfo" "$root/proc/cpuinfo"
    exec chroot "$root" /usr/bin/env -i HOME=/root PATH=/venv/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
      PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt ${QEMU_CPU:+QEMU_CPU=$QEMU_CPU} "$@"' _ "$ROOT" "$cpuinfo" "$@"
}
if [ ! -x "$ROOT/opt/midr" ]; then
  printf '%s\n' '#include <stdio.h>' \
    'int main(void) { unsigned long m; __asm__ volatile("mrs %0, midr_el1" : "=r"(m)); printf("%lx\n", m); return 0; }' \
    > "$ROOT/opt/midr.c"
  chroot "$ROOT" gcc -O1 -o /opt/midr /opt/midr.c
  rm -f "$ROOT"/etc/cpuinfo-*
fi
# pip verifies the index's certificate with the host's bundle (it may hold a proxy's CA).
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca-certificates.crt"

STAMP="$ROOT/venv/.edgedet-packages"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$PACKAGES" ]; then
  log "installing the base runtime from aarch64 wheels: $PACKAGES"
  rm -rf "$ROOT/venv"
  in_root /usr/bin/python3 -m venv /venv
  in_root python -m pip install -q --disable-pip-version-check --no-cache-dir \
    --only-binary=:all: $PACKAGES
  echo "$PACKAGES" > "$STAMP"
fi

# --- this tree's files, and the fused extension built for aarch64 -----------------------------------
rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
git ls-files -z --cached --others --exclude-standard | tar -C "$REPO" --null -T - -cf - 2>/dev/null | tar -C "$ROOT/src" -xf -
log "building the fused OpenVINO extension for aarch64"
mkdir -p "$ROOT/ovbuild"
in_root bash -c 'cd /ovbuild && cmake -S /src/converters/openvino/csrc -B . -DCMAKE_BUILD_TYPE=Release \
  -DOpenVINO_DIR=$(python -c "import openvino.utils as u; print(u.get_cmake_path())") -DEDGEDET_OUTPUT_DIR=/ovbuild/lib >/dev/null \
  && cmake --build . -j 2 2>&1 | grep -iE "warning|error" || true'
LIB="$ROOT/ovbuild/lib/libedgedet_ov_msda.so"
[ -f "$LIB" ] || { echo "the aarch64 build of libedgedet_ov_msda.so failed"; exit 1; }
file -b "$LIB" | grep -q "ARM aarch64" || { echo "$LIB is not an aarch64 library: $(file -b "$LIB")"; exit 1; }
if strings "$LIB" | grep -qiE "avx512|__cpu_indicator"; then echo "x86-only code in the aarch64 library"; exit 1; fi

# --- torch-free tests ---------------------------------------------------------------------------------
log "torch-free tests under qemu ($(echo $TESTS | wc -w) files)"
set +e
# Bounded: once, pytest printed its summary under qemu and then never exited (two threads in a futex wait);
# a hang after the summary still leaves the figures below, a hang before it counts as no test run.
in_root bash -c "cd /src && timeout -k 10 1200 python -m pytest -q -p no:cacheprovider -m 'not slow' $DESELECT $(echo $TESTS)" > "$CACHE/arm64-pytest.log" 2>&1
[ $? -eq 124 ] && log "pytest under qemu did not exit within 20 min: stopped (its summary, if printed, is used)"
set -e
tail -3 "$CACHE/arm64-pytest.log"
SUMMARY=$(tail -1 "$CACHE/arm64-pytest.log")
count() { { echo "$SUMMARY" | grep -oE "[0-9]+ $1" || true; } | awk '{s+=$1} END {print s+0}'; }
PASSED=$(count passed); FAILED=$(( $(count failed) + $(count error) ))
[ "$PASSED" -gt 0 ] || { FAILED=$((FAILED + 1)); echo "no test ran; see $CACHE/arm64-pytest.log"; }

# --- parity of x86-exported artifacts -------------------------------------------------------------------
# Exported once per demo checkpoint and parity script (cached beside the root).
KEY=$(cat edgedet/assets/demo_detector.pth scripts/arm64_parity.py | sha256sum | cut -c1-12)
PARITY=$CACHE/arm64-parity-$KEY
if [ ! -f "$PARITY/inputs.npy" ]; then
  log "exporting the demo detector on x86 and saving its x86 outputs"
  rm -rf "$PARITY.partial"
  nice -n 10 "$PY" scripts/arm64_parity.py export "$PARITY.partial" 2>&1 | tail -1
  mv "$PARITY.partial" "$PARITY"
fi
rm -rf "$ROOT/parity" && cp -r "$PARITY" "$ROOT/parity"
cp "$LIB" "$ROOT/parity/libedgedet_ov_msda.so"  # the fused artifact loads the library beside it: aarch64's here
FIGURES=""
for cpu in $CPU_MODELS; do
  log "parity under qemu -cpu $cpu"
  set +e
  QEMU_CPU=$cpu in_root python /src/scripts/arm64_parity.py check /parity --label "$cpu" > "$CACHE/arm64-parity-$cpu.log" 2>&1
  set -e
  grep -E "^(ok|FAIL) " "$CACHE/arm64-parity-$cpu.log" || tail -5 "$CACHE/arm64-parity-$cpu.log"
  RESULT=$(tail -1 "$CACHE/arm64-parity-$cpu.log")
  FIGS=$(echo "$RESULT" | "$PY" -c "import json,sys; d=json.load(sys.stdin); print(len(d['parity']), d['failed'], ', '.join(d['parity']))" 2>/dev/null) \
    || FIGS="3 3 no result (see $CACHE/arm64-parity-$cpu.log)"
  read -r n bad figs <<< "$FIGS"
  PASSED=$((PASSED + n - bad)); FAILED=$((FAILED + bad))
  FIGURES="$FIGURES; $cpu: $figs"
done
log "done in ${SECONDS} s (qemu $QEMU_VERSION; in the root: $(in_root python -c "import onnxruntime as r, openvino as o; print(\"onnxruntime\", r.__version__, \"openvino\", o.__version__.split(\"-\")[0])" 2>/dev/null))"
echo "arm64: $PASSED passed, $FAILED failed (tests + parity scores/boxes vs x86)$FIGURES"
[ "$FAILED" = 0 ]
