"""A bounded load test against 127.0.0.1: concurrent uploads to a real `edge-toolkit serve`,
every one answered and stored exactly once (benchmarks/serve_load.py runs the full 200 and
reports timings; this test asserts no timing)."""

from __future__ import annotations

import sys

import pytest
from tiny_models import cached_models
from web_helpers import GAP, ROOT

pytest.importorskip("flask")
pytest.importorskip("waitress")
sys.path.insert(0, str(ROOT / "benchmarks"))

import serve_load  # noqa: E402


def test_concurrent_uploads_are_each_stored_exactly_once(tmp_path_factory, tmp_path):
    pytest.importorskip("ai_edge_litert")
    model = cached_models(tmp_path_factory, {"gap": GAP})["gap"]
    data = tmp_path / "station"
    proc, url = serve_load.start_server(model, data, "--workers", "4")
    try:
        load = serve_load.run_load(url, serve_load.phantoms(4, side=128), uploads=40,
                                   clients=4)
    finally:
        code = serve_load.stop_server(proc)
    assert code == 0
    assert load["errors"] == []
    assert len(load["ids"]) == 40 and len(set(load["ids"].values())) == 40
    check = serve_load.check_exactly_once(data / "history.sqlite", load)
    assert check == {"rows": 40, "missing": [], "duplicated": [], "unexpected": [],
                     "id_mismatch": []}
