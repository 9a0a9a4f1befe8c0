"""Shared by the web station's tests: a phantom picture and a real `edge-toolkit serve`."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edge_toolkit.synthetic import phantom

ROOT = Path(__file__).resolve().parent.parent
# The hand-set fracture-gap detector of tiny_models, int8, with its feature-map output.
GAP = {"arch": "gap", "features": "last", "size": 64, "value_range": "0,1", "int8": True}


def xray_png(seed: int = 0, fractured: bool = True, side: int = 192) -> bytes:
    arr = phantom(np.random.default_rng(seed), fractured, side, center=(0.5, 0.5), angle=0.0,
                  fracture_at=0.3, slope=0.0)
    buf = io.BytesIO()
    Image.fromarray(arr[side // 6: side - side // 6]).save(buf, format="PNG")
    return buf.getvalue()


def start_server(model: Path, data: Path, *extra: str) -> tuple[subprocess.Popen, int, str]:
    """`edge-toolkit serve` on a free port; returns (process, port, its startup lines)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edge_toolkit.cli", "serve", str(model),
                             "--port", "0", "--data", str(data), *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving on http://\S+:(\d+)/", line)
        if m:
            return proc, int(m.group(1)), "".join(lines)
    proc.kill()
    raise AssertionError("server did not start: " + "".join(lines))


