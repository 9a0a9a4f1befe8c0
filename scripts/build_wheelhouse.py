"""Build a wheelhouse for an offline Raspberry Pi install, to carry on a USB stick.

Why: a field clinic often has no internet at all. This writes this project's wheel and every
device dependency (numpy, pillow, click, ai-edge-litert and theirs; optionally extras such as
web or dicom) as binary wheels for 64-bit Raspberry Pi OS (aarch64): Python 3.11 (bookworm)
and 3.13 (trixie) by default. Run it on any machine with internet (no Pi needed):

    python scripts/build_wheelhouse.py --out wheelhouse [--extras web,dicom]

then on the Pi, with no network:

    python3 -m venv ~/edge
    ~/edge/bin/pip install --no-index --find-links /media/usb/wheelhouse fracture-edge-toolkit
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIST = "fracture-edge-toolkit"
# Raspberry Pi OS bookworm has glibc 2.36, trixie 2.41: any manylinux wheel up to 2.36 runs on
# both. pip matches platform tags exactly, so every compatible one is listed.
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{n}_aarch64" for n in range(17, 37)]
PYTHONS = ("3.11", "3.13")


def build_wheel(out: Path) -> Path:
    """This project's own wheel (pure Python, with the bundled model; no demo data)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp,
                        str(REPO)], check=True)
        built = next(Path(tmp).glob("*.whl"))
        target = out / built.name
        target.write_bytes(built.read_bytes())
    return target


def wheel_extras(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return {line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra:")}


def download(wheel: Path, extras: list[str], python: str, out: Path) -> None:
    """Binary wheels of the dependencies for aarch64 and one Python version (no sdists)."""
    abi = "cp" + python.replace(".", "")
    req = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "--abi", abi,
           "--abi", "abi3", "--abi", "none", "-d", str(out), req]
    for p in PLATFORMS:
        cmd[4:4] = ["--platform", p]
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("wheelhouse"))
    ap.add_argument("--python", default=",".join(PYTHONS),
                    help="Python versions of the Pi, comma-separated (default 3.11,3.13).")
    ap.add_argument("--extras", default="",
                    help="Extras to include, comma-separated (e.g. web,dicom); the device "
                         "install needs none.")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(args.out)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    missing = [e for e in extras if e not in wheel_extras(wheel)]
    if missing:
        print(f"error: {DIST} has no extra(s) {', '.join(missing)} "
              f"(it has: {', '.join(sorted(wheel_extras(wheel)))})", file=sys.stderr)
        return 2
    failed = []
    for python in [p.strip() for p in args.python.split(",") if p.strip()]:
        try:
            download(wheel, extras, python, args.out)
        except subprocess.CalledProcessError:
            failed.append(python)
            print(f"error: no complete set of aarch64 wheels for Python {python} (see above)",
                  file=sys.stderr)
    wheels = sorted(p.name for p in args.out.glob("*.whl"))
    size = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    spec = f"{DIST}[{','.join(extras)}]" if extras else DIST
    print(f"{args.out}: {len(wheels)} wheels, {size / 2**20:.1f} MiB")
    print("On the Pi (64-bit Raspberry Pi OS), with no network:")
    print(f"  python3 -m venv ~/edge && ~/edge/bin/pip install --no-index "
          f"--find-links {args.out} '{spec}'")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
