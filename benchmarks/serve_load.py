"""Bounded load test of the clinic station: N uploads from C concurrent clients to 127.0.0.1.

Starts `edge-toolkit serve MODEL` (waitress) on a free port with a fresh data folder, sends
each upload (a synthetic phantom under a unique name) to /api/classify, then checks the
history database: every upload answered, every one stored exactly once, under the id the
server returned. Prints p50/p90 seconds per upload (request sent to answer received, which
includes the fsyncs and the commit) and the throughput.

    python benchmarks/serve_load.py                      # bundled model, 200 uploads, 4 clients
    python benchmarks/serve_load.py MODEL.tflite --uploads 200 --clients 4 --json out.json

Standard library only on the client side (urllib, threads), so it measures the server.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def phantoms(n: int = 8, side: int = 256, seed: int = 0) -> list[bytes]:
    """A few distinct synthetic radiographs as PNG bytes (cycled over the uploads)."""
    from PIL import Image

    from edge_toolkit.synthetic import phantom

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(phantom(rng, bool(i % 2), side)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def multipart(name: str, data: bytes, reference: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="reference"\r\n\r\n'
        f"{reference}\r\n".encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload(url: str, name: str, data: bytes, token: str | None = None,
           timeout: float = 120.0) -> tuple[float, dict[str, Any]]:
    """One upload to /api/classify; (seconds, the JSON answer). Raises on a non-200."""
    body, ctype = multipart(name, data, f"load-{name}")
    headers = {"Content-Type": ctype, "X-Requested-With": "serve_load"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{url}/api/classify", data=body, headers=headers,
                                 method="POST")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    return time.perf_counter() - t0, answer


def run_load(url: str, images: list[bytes], uploads: int, clients: int,
             token: str | None = None) -> dict[str, Any]:
    """`uploads` uploads spread over `clients` threads, each sending one after another."""
    names = [f"load-{i:05d}.png" for i in range(uploads)]
    lock = threading.Lock()
    out: dict[str, Any] = {"latency_s": {}, "ids": {}, "errors": []}

    def client(k: int) -> None:
        for i in range(k, uploads, clients):
            try:
                seconds, answer = upload(url, names[i], images[i % len(images)], token)
                results = answer.get("results") or []
                with lock:
                    out["latency_s"][names[i]] = seconds
                    if len(results) == 1 and results[0]["file_name"] == names[i]:
                        out["ids"][names[i]] = results[0]["id"]
                    else:
                        out["errors"].append(f"{names[i]}: unexpected answer {answer}")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                with lock:
                    out["errors"].append(f"{names[i]}: {exc}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    out["seconds"] = time.perf_counter() - t0
    out["names"] = names
    return out


def check_exactly_once(db_path: Path, load: dict[str, Any]) -> dict[str, Any]:
    """Every uploaded name once in the history, under the id the server answered with."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, file_name FROM results").fetchall()
    finally:
        db.close()
    counts: dict[str, int] = {}
    ids: dict[str, int] = {}
    for rid, name in rows:
        counts[name] = counts.get(name, 0) + 1
        ids[name] = rid
    names = load["names"]
    return {
        "rows": len(rows),
        "missing": [n for n in names if counts.get(n, 0) == 0],
        "duplicated": [n for n, c in counts.items() if c > 1],
        "unexpected": [n for n in counts if n not in set(names)],
        "id_mismatch": [n for n, i in load["ids"].items() if ids.get(n) != i],
    }


def summary(load: dict[str, Any]) -> dict[str, Any]:
    lat = np.array(list(load["latency_s"].values()), dtype=np.float64)
    return {
        "uploads_answered": int(len(lat)), "errors": len(load["errors"]),
        "p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
        "p90_s": float(np.percentile(lat, 90)) if len(lat) else None,
        "mean_s": float(lat.mean()) if len(lat) else None,
        "wall_s": load["seconds"],
        "uploads_per_s": len(lat) / load["seconds"] if load["seconds"] else None,
    }


def start_server(model: Path | None, data: Path, *extra: str
                 ) -> tuple[subprocess.Popen, str]:
    """`edge-toolkit serve` on a free loopback port; (process, base URL)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                "")}
    cmd = [sys.executable, "-m", "edge_toolkit.cli", "serve", *([str(model)] if model else []),
           "--port", "0", "--data", str(data), "--no-camera", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"serving on (http://\S+?)/? ", line)
        if m:
            return proc, m.group(1).rstrip("/")
    proc.wait()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    if proc.stderr is not None:
        proc.stderr.read()
    return proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, help="default: the bundled model")
    ap.add_argument("--uploads", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=4, help="server threads")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "station"
        proc, url = start_server(args.model, data, "--workers", str(args.workers))
        try:
            load = run_load(url, phantoms(), args.uploads, args.clients)
        finally:
            code = stop_server(proc)
        check = check_exactly_once(data / "history.sqlite", load)
    report = {"uploads": args.uploads, "clients": args.clients, "workers": args.workers,
              "model": str(args.model or "bundled"), **summary(load),
              "stored_rows": check["rows"], "server_exit": code,
              "exactly_once": not any(check[k] for k in ("missing", "duplicated",
                                                         "unexpected", "id_mismatch"))
              and check["rows"] == args.uploads}
    for line in load["errors"][:10]:
        print("error:", line, file=sys.stderr)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["exactly_once"] and not load["errors"] and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
