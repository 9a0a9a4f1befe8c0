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


def read_only_probe(model: str, folder: str) -> None:
    """Run inside `unshare -r -m` (a private mount namespace): a station on a fresh tmpfs
    stores one picture, the tmpfs is remounted read-only, then every page is asked for; prints
    {what: [status, text]} as JSON. The real thing, where chmod does not stop root."""
    import json

    from edge_toolkit.runtime import Classifier
    from edge_toolkit.web.app import Settings, create_app
    from edge_toolkit.web.station import Station

    subprocess.run(["mount", "-t", "tmpfs", "none", folder], check=True)
    station = Station(Classifier.load(model), folder)
    client = create_app(station, Settings(token=None, secret_key=b"k" * 32)).test_client()
    page = client.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    def post(url: str, **data: object) -> object:
        return client.post(url, data={"csrf": csrf, **data}, content_type="multipart/form-data")

    first = post("/upload", files=[(io.BytesIO(xray_png(0)), "a.png")])
    subprocess.run(["mount", "-o", "remount,ro", folder], check=True)
    out = {"first": first.status_code}
    for url in ("/", "/history", "/history.csv", "/result/1", "/files/1/display.png"):
        resp = client.get(url)
        out[url] = [resp.status_code, resp.get_data()[:20000].decode(errors="replace")]
    for url, form in (("/upload", {"files": [(io.BytesIO(xray_png(1)), "b.png")]}),
                      ("/result/1/verdict", {"verdict": "agree", "note": "kept"})):
        resp = post(url, **form)
        out[url] = [resp.status_code, resp.get_data(as_text=True)]
    out["images"] = sorted(os.listdir(os.path.join(folder, "images")))
    print(json.dumps(out))
