#!/usr/bin/env bash
# The arm64 check: does the device install work, and answer the same, on aarch64?
#
# Builds (once, then reused) a Debian bookworm arm64 root filesystem with debootstrap, run
# through qemu-user-static (binfmt_misc); builds the wheelhouse (scripts/build_wheelhouse.py)
# and installs it inside with no network (`pip install --no-index --find-links`); classifies
# real X-rays with the bundled model there and here (x86_64) and compares (same labels, raw
# probabilities within one output quantization step: scripts/compare_classify.py); then runs
# the TensorFlow-free tests inside (their tiny models are built here first, where TensorFlow
# is). Times under emulation say nothing about a Raspberry Pi's speed.
#
# qemu-user shows the guest the host's /proc/cpuinfo (x86), on which LiteRT's CPU detection
# crashes (segmentation fault while creating the interpreter): the check binds a Raspberry Pi
# 4 style cpuinfo over it and emulates that CPU (QEMU_CPU=cortex-a72, no dot product).
#
# Needs root, network for the first run (Debian packages and the wheelhouse), and:
#   apt-get update && apt-get install -y debootstrap qemu-user-static binfmt-support
# Usage (from the repository root):
#   sudo scripts/arm64_check.sh          # env: N=20 IMAGES=DIR ROOTFS=DIR WORK=DIR HOST_PY=...
#   KEEP_VENV=1 reuses the last run's venv inside (dependencies from the same wheelhouse) and
#   reinstalls only this project's wheel, offline: a quicker rerun after a code change.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOTFS=${ROOTFS:-/var/tmp/edge-toolkit-arm64-bookworm}
WORK=${WORK:-/var/tmp/edge-toolkit-arm64-check}
HOST_PY=${HOST_PY:-$REPO/.venv/bin/python}
IMAGES=${IMAGES:-$REPO/../shared/data/fracture-xray/test}
N=${N:-20}
MIRROR=${MIRROR:-}   # empty: debootstrap's default Debian mirror
QEMU_CPU=${QEMU_CPU:-cortex-a72}   # the emulated core: Raspberry Pi 4's
KEEP_VENV=${KEEP_VENV:-0}
TESTS=${TESTS:-"tests/test_runtime_classifier.py tests/test_runtime_cli.py tests/test_runtime_tf_free.py tests/test_runtime_sources.py tests/test_runtime_capture.py tests/test_runtime_bench.py tests/test_core.py tests/test_metrics.py"}
NICE=(nice -n 19)
MODEL=$(ls "$REPO"/edge_toolkit/models/*.tflite | head -1)   # the bundled model, whatever its name

say() { printf '== %s (%ss)\n' "$*" "$((SECONDS))"; }
die() { echo "arm64 check: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, binfmt_misc)"
for tool in debootstrap chroot update-binfmts; do
    command -v "$tool" >/dev/null || die "$tool missing: apt-get install -y debootstrap qemu-user-static binfmt-support"
done
[ -x "$HOST_PY" ] || die "no host Python with the toolkit at $HOST_PY (set HOST_PY)"
[ -d "$IMAGES" ] || die "no images at $IMAGES (set IMAGES to a folder of X-rays)"

say "binfmt_misc: aarch64 binaries through qemu-aarch64-static"
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc (a container without that privilege cannot run this check)"
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
    || die "cannot register qemu-aarch64 with binfmt_misc"

if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    say "debootstrap bookworm arm64 into $ROOTFS"
    rm -rf "$ROOTFS"
    # shellcheck disable=SC2086
    "${NICE[@]}" debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv bookworm "$ROOTFS" $MIRROR
fi
[ -e "$ROOTFS/usr/bin/qemu-aarch64-static" ] || cp /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/"

say "wheelhouse (Python 3.11, aarch64) and the test tools"
rm -rf "$WORK" && mkdir -p "$WORK"
"$HOST_PY" "$REPO/scripts/build_wheelhouse.py" --out "$WORK/wheelhouse" --python 3.11
"$HOST_PY" -m pip download -q --only-binary=:all: --platform manylinux2014_aarch64 \
    --python-version 3.11 --implementation cp --abi cp311 -d "$WORK/wheelhouse-test" pytest

say "$N images from $IMAGES, half of each class folder"
mkdir -p "$WORK/images"
classes=("$IMAGES"/*/)
per=$(( (N + ${#classes[@]} - 1) / ${#classes[@]} ))
for c in "${classes[@]}"; do
    # awk, not head: under pipefail, sort killed by SIGPIPE when head exits early stops the
    # whole script (seen once, after all the images were copied)
    find "$c" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) \
        | sort | awk -v n="$per" 'NR <= n' | while read -r f; do
            cp "$f" "$WORK/images/$(basename "$c" | tr ' ' _)-$(basename "$f" | tr ' ' _)"
        done
done

say "tiny test models, built here (TensorFlow) for the tests inside"
(cd "$REPO" && "$HOST_PY" tests/tiny_models.py --prebuild "$WORK/tiny_models")

say "classify on x86_64"
PYTHONPATH=$REPO "$HOST_PY" -m edge_toolkit.cli classify "$WORK/images" --format csv \
    --output "$WORK/x86_64.csv" -q

CHECK=$ROOTFS/opt/check
mkdir -p "$CHECK"
find "$CHECK" -mindepth 1 -maxdepth 1 ! -name venv -exec rm -rf {} +
[ "$KEEP_VENV" = 1 ] || rm -rf "$CHECK/venv"
cp -r "$WORK/wheelhouse" "$WORK/wheelhouse-test" "$WORK/images" "$WORK/tiny_models" "$CHECK/"
cp -r "$REPO/tests" "$REPO/pyproject.toml" "$CHECK/"
rm -rf "$CHECK/tests/__pycache__"
for fs in proc sys dev; do mountpoint -q "$ROOTFS/$fs" || mount --bind "/$fs" "$ROOTFS/$fs"; done
cat > "$WORK/cpuinfo" <<'CPUINFO'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B (emulated: qemu-user)
CPUINFO
mount --bind "$WORK/cpuinfo" "$ROOTFS/proc/cpuinfo"
trap 'umount "$ROOTFS/proc/cpuinfo" 2>/dev/null || true
      for fs in proc sys dev; do umount "$ROOTFS/$fs" 2>/dev/null || true; done' EXIT
inside() { "${NICE[@]}" chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root \
    LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" /bin/sh -c "cd /opt/check && $*"; }

say "offline install inside arm64 (pip --no-index)"
if [ "$KEEP_VENV" = 1 ] && [ -x "$CHECK/venv/bin/python" ]; then
    inside "venv/bin/pip install -q --no-index --find-links wheelhouse --no-deps \
        --force-reinstall fracture-edge-toolkit"
else
    inside "uname -m && python3 --version && python3 -m venv venv && venv/bin/pip install -q \
        --no-index --find-links wheelhouse --find-links wheelhouse-test fracture-edge-toolkit pytest"
fi
inside "tail -1 /proc/cpuinfo && venv/bin/pip list 2>/dev/null | grep -Ei 'edge|litert|numpy|pillow'"

say "classify on arm64 (emulated)"
t0=$SECONDS
inside "venv/bin/edge-toolkit classify images --format csv --output arm64.csv -q"
echo "classify under emulation: $((SECONDS - t0)) s"
cp "$CHECK/arm64.csv" "$WORK/arm64.csv"

say "compare"
status=0
PYTHONPATH=$REPO "$HOST_PY" "$REPO/scripts/compare_classify.py" "$WORK/x86_64.csv" \
    "$WORK/arm64.csv" --model "$MODEL" --json "$WORK/compare.json" || status=1

say "TensorFlow-free tests on arm64 (emulated)"
inside "EDGE_TOOLKIT_TEST_MODELS=/opt/check/tiny_models venv/bin/python -m pytest -q \
    -p no:cacheprovider $TESTS" || status=1

say "done: status $status; results in $WORK"
exit $status
