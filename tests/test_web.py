"""The clinic web station: pages, history, safety limits, login, and `edge-toolkit serve`."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import cached_models, make_bad_files
from web_helpers import GAP, ROOT, start_server, xray_png

pytest.importorskip("flask")
pytest.importorskip("waitress")

from edge_toolkit.runtime import Classifier  # noqa: E402
from edge_toolkit.web.app import Settings, create_app, package_files  # noqa: E402
from edge_toolkit.web.station import Limits, Station  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    return cached_models(tmp_path_factory, {"gap": GAP, "single": {}})


def make_client(model: Path, data: Path, token: str | None = None, limits: Limits | None = None,
                camera=None, max_request: int = 8 * 1024 * 1024):
    station = Station(Classifier.load(model), data, limits, camera)
    app = create_app(station, Settings(token=token, secret_key=b"k" * 32,
                                       max_request_bytes=max_request))
    return station, app.test_client()


def csrf_of(client) -> str:
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def upload(client, files: list[tuple[bytes, str]], **form):
    data = {"csrf": csrf_of(client), **form,
            "files": [(io.BytesIO(b), name) for b, name in files]}
    return client.post("/upload", data=data, content_type="multipart/form-data",
                       follow_redirects=True)


def rows(data: Path) -> list[dict]:
    """The history as another process would read it: only what was committed."""
    db = sqlite3.connect(data / "history.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM results ORDER BY id")]
    finally:
        db.close()


def test_upload_many_shows_each_result_already_committed(models, tmp_path):
    station, client = make_client(models["gap"], tmp_path / "data")
    resp = upload(client, [(xray_png(0), "a.png"), (xray_png(1, False), "b.png")],
                  reference="STUDY-7")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "2 results saved" in page and "a.png" in page and "b.png" in page
    assert "not a diagnosis" in page  # the disclaimer is on every page
    stored = rows(tmp_path / "data")
    assert [r["file_name"] for r in stored] == ["a.png", "b.png"]
    for r in stored:
        assert r["reference"] == "STUDY-7" and r["status"] == "ok"
        assert r["label"] in ("fractured", "not fractured") and 0 <= r["probability"] <= 1
        assert r["threshold"] == pytest.approx(0.5) and r["model_id"] == station.clf.model_id
        assert f'id="label-{r["id"]}">{r["label"]}<' in page
        for col in ("stored_image", "display", "heatmap"):
            assert (tmp_path / "data" / r[col]).is_file()
    assert stored[0]["probability"] > stored[1]["probability"]  # fracture vs none
    # the picture and its heatmap are served; the heat layer is a transparent PNG
    heat = client.get(f"/files/{stored[0]['id']}/heat.png")
    assert heat.status_code == 200 and Image.open(io.BytesIO(heat.data)).mode == "RGBA"
    original = client.get(f"/files/{stored[0]['id']}/original")
    assert original.data == xray_png(0)


def test_reloading_the_results_page_does_not_upload_again(models, tmp_path):
    """Post/Redirect/Get: the upload answers with a redirect to a GET page of the stored
    results; reloading that page shows them again and stores nothing new."""
    _, client = make_client(models["gap"], tmp_path / "data")
    data = {"csrf": csrf_of(client),
            "files": [(io.BytesIO(xray_png(0)), "a.png"), (io.BytesIO(b"junk"), "bad.png")]}
    resp = client.post("/upload", data=data, content_type="multipart/form-data")
    assert resp.status_code == 303 and "/results?ids=1" in resp.headers["Location"]
    first = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "a.png" in first and "bad.png" in first  # the error line comes along once
    again = client.get(resp.headers["Location"])
    assert again.status_code == 200 and "a.png" in again.get_data(as_text=True)
    assert "bad.png" not in again.get_data(as_text=True)
    assert len(rows(tmp_path / "data")) == 1
    assert client.get("/results?ids=99").status_code == 404
    assert client.get("/results?ids=x").status_code == 400


def test_result_page_has_label_probability_threshold_model_and_opacity(models, tmp_path):
    station, client = make_client(models["gap"], tmp_path / "data")
    upload(client, [(xray_png(0), "a.png")])
    page = client.get("/result/1").get_data(as_text=True)
    r = rows(tmp_path / "data")[0]
    assert f"{100 * r['probability']:.1f}%" in page and "threshold <strong>50.0%" in page
    assert station.model_name in page and station.clf.model_id in page
    assert 'type="range"' in page and 'id="heat-1"' in page
    assert "Decision support for a trained reader, not a diagnosis." in page


def test_single_output_model_shows_no_heatmap_and_says_so(models, tmp_path):
    _, client = make_client(models["single"], tmp_path / "data")
    page = upload(client, [(xray_png(0), "a.png")]).get_data(as_text=True)
    assert 'type="range"' not in page and "no feature-map output" in page
    assert rows(tmp_path / "data")[0]["heatmap"] is None


def test_bad_uploads_each_get_a_clear_message_and_the_server_keeps_serving(models, tmp_path):
    bad = make_bad_files(tmp_path / "bad")
    big = np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    _, client = make_client(models["gap"], tmp_path / "data",
                            limits=Limits(max_file_bytes=100_000, max_pixels=10_000_000),
                            max_request=1_000_000)
    cases = {
        "notes.png": (bad["text"].read_bytes(), "not an image file"),
        "bomb.png": (bad["bomb"].read_bytes(), "pixel bomb"),
        "empty.png": (b"", "empty file"),
        "big.png": (buf.getvalue(), "over the 0.1 MB limit"),
        "truncated.jpg": (bad["truncated"].read_bytes(), "truncated"),
    }
    for name, (data, message) in cases.items():
        resp = upload(client, [(data, name)])
        page = resp.get_data(as_text=True)
        assert resp.status_code == 400, name
        assert f"{name}: " in page and message in page, (name, page[:2000])
    # a bad file next to a good one: the good one is kept, the bad one named
    resp = upload(client, [(bad["text"].read_bytes(), "notes.png"), (xray_png(0), "ok.png")])
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "notes.png: not an image file" in page
    # a request over the whole-upload cap: a page saying so, not a dropped connection
    resp = upload(client, [(b"\0" * 1_200_000, "huge.png")])
    assert resp.status_code == 413 and "too large" in resp.get_data(as_text=True)
    resp = upload(client, [(b"x", f"{i}.png") for i in range(1001)])  # too many parts
    assert resp.status_code == 413 and "1000 pictures and fields" in resp.get_data(as_text=True)
    assert [r["file_name"] for r in rows(tmp_path / "data")] == ["ok.png"]
    kept = {p.name for p in (tmp_path / "data" / "images").iterdir()}
    assert kept == {Path(rows(tmp_path / "data")[0]["stored_image"]).name}  # nothing else
    assert upload(client, [(xray_png(1), "again.png")]).status_code == 200


def test_a_full_disk_fails_that_picture_only_and_leaves_nothing_of_it(models, tmp_path,
                                                                     monkeypatch):
    """ENOSPC while a picture's display copy is written: it gets a message, nothing of it
    stays on disk or in the history, and the pictures before and after it are kept."""
    import errno

    import edge_toolkit.web.station as station_module

    real = station_module.atomic_write

    def full_for_the_second_display(path, data, **kw):
        if path.parent.name == "display" and not hasattr(full_for_the_second_display, "hit"):
            if any((path.parent).iterdir()):  # the first picture's copy is there already
                full_for_the_second_display.hit = True
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(station_module, "atomic_write", full_for_the_second_display)
    _, client = make_client(models["gap"], tmp_path / "data")
    resp = client.post("/api/classify", headers={"X-Requested-With": "t"},
                       content_type="multipart/form-data",
                       data={"files": [(io.BytesIO(xray_png(i)), f"{n}.png")
                                       for i, n in enumerate("abc")]})
    body = resp.get_json()
    assert resp.status_code == 200, body
    assert [r["file_name"] for r in body["results"]] == ["a.png", "c.png"]
    assert body["errors"] == ["b.png: could not be stored (No space left on device); nothing "
                              "was kept for it"]
    data = tmp_path / "data"
    assert [r["file_name"] for r in rows(data)] == ["a.png", "c.png"]
    for sub in ("images", "display"):  # exactly the two committed pictures' files
        assert len(list((data / sub).iterdir())) == 2, sub


def form_tokens(client) -> dict[str, str]:
    """The upload form's hidden fields: its CSRF token and its one-time submit token."""
    page = client.get("/").get_data(as_text=True)
    return dict(re.findall(r'name="(csrf|submit_token)" value="([^"]+)"', page))


def second_tab(client):
    """A second browser tab of the same session: another test client with its cookie."""
    other = client.application.test_client()
    other.set_cookie("edge_toolkit_session",
                     client.get_cookie("edge_toolkit_session").value)
    return other


def test_a_form_sent_twice_is_stored_once_and_shows_the_first_results(models, tmp_path,
                                                                      monkeypatch):
    """A double click or a browser's re-POST: the same one-time form token with the same
    pictures. The repeat (even while the first is still classifying) is shown the first's
    results and stores nothing; the same form with other pictures is a new submit."""
    import threading

    station, client = make_client(models["gap"], tmp_path / "data")
    form = form_tokens(client)

    def send(c, files, **extra):
        data = {**form, **extra, "files": [(io.BytesIO(b), n) for b, n in files]}
        return c.post("/upload", data=data, content_type="multipart/form-data")

    # the second click arrives while the first is still being classified
    real, entered, release = station.classify_bytes, threading.Event(), threading.Event()

    def slow(*args, **kw):
        entered.set()
        assert release.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(station, "classify_bytes", slow)
    other = second_tab(client)
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault(
        "first", send(client, [(xray_png(0), "a.png")], reference="R-1")))
    first.start()
    assert entered.wait(30)
    second = threading.Thread(target=lambda: answers.setdefault(
        "second", send(other, [(xray_png(0), "a.png")], reference="R-1")))
    second.start()
    second.join(0.5)
    release.set()
    first.join(30)
    second.join(30)
    assert answers["first"].status_code == answers["second"].status_code == 303
    assert answers["first"].headers["Location"].endswith("/results?ids=1")
    assert answers["second"].headers["Location"].endswith("/results?ids=1&again=1")
    page = other.get(answers["second"].headers["Location"]).get_data(as_text=True)
    assert "sent more than once" in page and "a.png" in page
    # the browser sending the form again later: still the first's results
    assert send(client, [(xray_png(0), "a.png")], reference="R-1").headers[
        "Location"].endswith("/results?ids=1&again=1")
    assert [r["file_name"] for r in rows(tmp_path / "data")] == ["a.png"]
    # the same form with another picture is a new submit
    assert send(client, [(xray_png(1), "b.png")], reference="R-1").headers[
        "Location"].endswith("/results?ids=2")
    assert [r["file_name"] for r in rows(tmp_path / "data")] == ["a.png", "b.png"]
    # scripts: a submit_token makes a retry safe; without one every POST classifies
    api = {"headers": {"X-Requested-With": "t"}, "content_type": "multipart/form-data"}
    bodies = [client.post("/api/classify", **api, data={
        "submit_token": "retry-1", "files": [(io.BytesIO(xray_png(2)), "c.png")]}).get_json()
        for _ in range(2)]
    assert [r["id"] for r in bodies[1]["results"]] == [r["id"] for r in bodies[0]["results"]]
    assert bodies[1]["repeat"] is True and "repeat" not in bodies[0]

    def as_bmp(seed: int) -> bytes:  # BMP: two pictures of one size are files of one length
        buf = io.BytesIO()
        Image.open(io.BytesIO(xray_png(seed))).save(buf, format="BMP")
        return buf.getvalue()

    one, two = as_bmp(5), as_bmp(6)
    assert len(one) == len(two) and one != two
    studies = [client.post("/api/classify", **api, data={
        "submit_token": "reused", "files": [(io.BytesIO(b), "IM000001.bmp")]}).get_json()
        for b in (one, two)]  # a script reusing its token for the next study's picture
    assert "repeat" not in studies[1]
    assert studies[1]["results"][0]["id"] != studies[0]["results"][0]["id"]
    for _ in range(2):
        client.post("/api/classify", **api,
                    data={"files": [(io.BytesIO(xray_png(3)), "d.png")]})
    assert [r["file_name"] for r in rows(tmp_path / "data")] == [
        "a.png", "b.png", "c.png", "IM000001.bmp", "IM000001.bmp", "d.png", "d.png"]


def test_empty_file_inputs_are_skipped_and_a_nameless_picture_is_kept(models, tmp_path):
    """A browser sends an empty part (no file name, no bytes) for a file input left empty:
    beside chosen pictures that is normal and says nothing; alone it is a clear message. A
    part with bytes but no file name is a picture, never dropped silently."""
    _, client = make_client(models["gap"], tmp_path / "data")
    resp = upload(client, [(xray_png(1), ""), (b"", "")])
    assert resp.status_code == 200 and 'id="errors"' not in resp.get_data(as_text=True)
    resp = upload(client, [(b"", ""), (xray_png(0), "a.png"), (b"", "")])
    assert resp.status_code == 200 and 'id="errors"' not in resp.get_data(as_text=True)
    assert [r["file_name"] for r in rows(tmp_path / "data")] == ["upload", "a.png"]
    resp = upload(client, [(b"", "")])
    assert resp.status_code == 400
    assert "No picture was chosen: choose one or more" in resp.get_data(as_text=True)
    api = client.post("/api/classify", headers={"X-Requested-With": "t"},
                      content_type="multipart/form-data", data={"files": "xray.png"})
    assert api.status_code == 400
    assert "'files' came as a text field: with curl, -F files=@PATH" in api.json["errors"][0]


def test_a_reference_or_note_over_its_limit_is_refused_not_cut(models, tmp_path):
    """A cut patient reference points at another patient or none; a cut note loses the
    reader's words: both are refused with a message, what was typed stays in the form, and
    nothing is stored. A note's CRLF line breaks count as one character, as the browser's
    maxlength counts them."""
    _, client = make_client(models["gap"], tmp_path / "data")
    long_ref = "R" * 201
    resp = upload(client, [(xray_png(0), "a.png")], reference=long_ref)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "The reference is 201 characters long; at most 200" in page
    assert f'value="{long_ref}"' in page and rows(tmp_path / "data") == []
    api = client.post("/api/classify", headers={"X-Requested-With": "t"},
                      content_type="multipart/form-data",
                      data={"reference": long_ref, "files": [(io.BytesIO(xray_png()), "a.png")]})
    assert api.status_code == 400 and "at most 200" in api.json["errors"][0]
    assert upload(client, [(xray_png(0), "a.png")], reference="R" * 200).status_code == 200
    assert rows(tmp_path / "data")[0]["reference"] == "R" * 200
    csrf = csrf_of(client)
    resp = client.post("/result/1/verdict", data={"csrf": csrf, "verdict": "agree",
                                                  "note": "n" * 2001})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "The note is 2001 characters long" in page
    assert "n" * 2001 + "</textarea>" in page and 'value="agree" checked' in page
    assert rows(tmp_path / "data")[0]["verdict"] is None
    note = "\r\n".join(["x" * 180] * 11)  # 1990 characters as typed, 2000 as sent
    resp = client.post("/result/1/verdict", data={"csrf": csrf, "verdict": "agree",
                                                  "note": note})
    assert resp.status_code == 302
    assert rows(tmp_path / "data")[0]["note"] == note.replace("\r\n", "\n")


def test_a_read_only_data_folder_keeps_the_pages_and_fails_a_submit_clearly(
        models, tmp_path, monkeypatch):
    """The data folder becomes read-only while the station runs (simulated: tests may run as
    root, whom chmod does not stop). SQLite then cannot open the WAL database but as
    immutable, and every write fails with EROFS: the pages that only read still answer, a
    submit and a verdict fail with a message naming the folder, and nothing new is kept."""
    import errno
    import types

    import edge_toolkit.web.station as station_module

    station, client = make_client(models["gap"], tmp_path / "data")
    upload(client, [(xray_png(0), "a.png")], reference="R-1")
    data = tmp_path / "data"
    kept = sorted(p.name for sub in ("images", "display", "heat") for p in (data / sub).iterdir())
    real_connect = sqlite3.connect

    def read_only_sqlite(database, *args, uri=False, **kw):
        if uri and "immutable=1" in str(database):
            return real_connect(database, *args, uri=uri, **kw)
        raise sqlite3.OperationalError("unable to open database file")

    def read_only_write(path, payload, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(sqlite3, "connect", read_only_sqlite)
    monkeypatch.setattr(station_module, "atomic_write", read_only_write)
    monkeypatch.setattr(os, "statvfs",
                        lambda path: types.SimpleNamespace(f_flag=os.ST_RDONLY))
    for url in ("/", "/history", "/history.csv", "/result/1", "/files/1/display.png"):
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.get_data(as_text=True)[:500])
    assert "a.png" in client.get("/history").get_data(as_text=True)
    problem = f"Cannot save to the data folder {data.resolve()}: read-only file system"
    resp = upload(client, [(xray_png(1), "b.png"), (xray_png(2), "c.png")])
    page = resp.get_data(as_text=True)
    assert resp.status_code == 503 and problem in page, page[:3000]
    assert "Nothing was kept for b.png. The 1 picture(s) after it were not classified" in page
    api = client.post("/api/classify", headers={"X-Requested-With": "t"},
                      content_type="multipart/form-data",
                      data={"files": [(io.BytesIO(xray_png(1)), "b.png")]})
    assert api.status_code == 503 and api.json["errors"][0].startswith(problem)
    resp = client.post("/result/1/verdict", data={"csrf": csrf_of(client), "verdict": "agree",
                                                  "note": "callus"})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 503 and problem in page and "callus</textarea>" in page
    assert "Traceback" not in page
    monkeypatch.undo()
    assert [(r["file_name"], r["verdict"]) for r in rows(data)] == [("a.png", None)]
    assert sorted(p.name for sub in ("images", "display", "heat")
                  for p in (data / sub).iterdir()) == kept


def test_a_passing_database_error_on_a_writable_folder_is_not_read_around(tmp_path,
                                                                        monkeypatch):
    """The immutable read ignores the WAL, so it may miss results just stored: only a folder
    that cannot be written falls back to it; any other error is raised, not hidden."""
    from edge_toolkit.web.store import HistoryStore

    store = HistoryStore(tmp_path / "history.sqlite")
    real_connect, opened = sqlite3.connect, []

    def flaky(database, *args, uri=False, **kw):
        opened.append(str(database))
        if not uri:
            raise sqlite3.OperationalError("disk I/O error")
        return real_connect(database, *args, uri=uri, **kw)

    monkeypatch.setattr(sqlite3, "connect", flaky)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        store.count()
    assert not any("immutable=1" in d for d in opened)


def test_a_really_read_only_mount_keeps_the_pages_and_fails_a_submit_clearly(models,
                                                                             tmp_path):
    """The same on a real read-only tmpfs, in a private mount namespace (skipped where
    unprivileged namespaces are not allowed)."""
    import json
    import shutil

    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user and mount namespaces here (unshare -r -m)")
    folder = tmp_path / "mnt"
    folder.mkdir()
    code = ("import sys; sys.path.insert(0, sys.argv[3]); import web_helpers; "
            "web_helpers.read_only_probe(sys.argv[1], sys.argv[2])")
    proc = subprocess.run(["unshare", "-r", "-m", sys.executable, "-c", code,
                           str(models["gap"]), str(folder), str(ROOT / "tests")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first"] == 303
    for url in ("/", "/history", "/history.csv", "/result/1", "/files/1/display.png"):
        assert out[url][0] == 200, (url, out[url][1][:500])
    assert "a.png" in out["/history"][1]
    problem = f"Cannot save to the data folder {folder}: read-only file system"
    for url in ("/upload", "/result/1/verdict"):
        assert out[url][0] == 503 and problem in out[url][1], (url, out[url][1][:3000])
    assert len(out["images"]) == 1


def test_what_the_decoder_noted_reaches_the_result_not_only_the_log(models, tmp_path):
    buf = io.BytesIO()
    Image.open(io.BytesIO(xray_png(0))).save(buf, format="JPEG", quality=95)
    no_end = buf.getvalue()[:-2]  # a JPEG without its end marker: loads, with a note
    _, client = make_client(models["gap"], tmp_path / "data")
    resp = client.post("/api/classify", headers={"X-Requested-With": "t"},
                       content_type="multipart/form-data",
                       data={"files": [(io.BytesIO(no_end), "cut.jpg")]})
    warnings = resp.get_json()["results"][0]["warnings"]
    assert any(w.startswith("JPEG end marker missing") for w in warnings), warnings
    assert not any(str(tmp_path) in w for w in warnings)  # no server path in the page


def test_result_numbers_beyond_sqlite_are_404_not_500(models, tmp_path):
    _, client = make_client(models["gap"], tmp_path / "data")
    huge = "9" * 20
    for url in (f"/result/{huge}", f"/results?ids={huge}", f"/files/{huge}/original"):
        assert client.get(url).status_code == 404, url


def test_the_results_page_counts_every_saved_picture_and_errors_fit_the_cookie(
        models, tmp_path, monkeypatch):
    import edge_toolkit.web.app as app_module

    monkeypatch.setattr(app_module, "MAX_RESULTS_SHOWN", 2)
    _, client = make_client(models["gap"], tmp_path / "data")
    bad = [(b"not a picture", "\u9aa8" * 60 + f"{i}.png") for i in range(30)]
    resp = upload(client, [(xray_png(i), f"{i}.png") for i in range(3)] + bad)
    page = resp.get_data(as_text=True)
    assert "3 results saved to the history (the first 2 shown here" in page
    assert "more files could not be read" in page  # cut to fit, and said so
    cookie = app_module._cookie_sized([f"{name}: not an image file" for _, name in bad])
    import json
    assert sum(len(json.dumps(line)) for line in cookie) <= app_module.ERRORS_IN_COOKIE + 100


def test_serve_refuses_a_damaged_history_in_one_line(models, tmp_path):
    from click.testing import CliRunner

    from edge_toolkit.cli import main

    data = tmp_path / "d"
    data.mkdir()
    (data / "history.sqlite").write_bytes(b"this is not a database" * 100)
    res = CliRunner().invoke(main, ["serve", str(models["gap"]), "--data", str(data),
                                    "--no-camera"])
    assert res.exit_code == 2 and "cannot open the history" in res.output, res.output
    assert "Traceback" not in res.output


def test_history_filters_csv_and_verdicts(models, tmp_path):
    station, client = make_client(models["gap"], tmp_path / "data")
    upload(client, [(xray_png(0), "=cmd.png"), (xray_png(1, False), "b.png")],
           reference="ST-1")
    upload(client, [(xray_png(2, False), "c.png")], reference="ST-2")
    labels = {r["file_name"]: r["label"] for r in rows(tmp_path / "data")}
    one = next(n for n in labels if labels[n] == labels["b.png"])
    page = client.get("/history", query_string={"label": labels[one]}).get_data(as_text=True)
    shown = re.findall(r"<td>([^<]*\.png)</td>", page)
    assert sorted(shown) == sorted(n for n in labels if labels[n] == labels[one])
    page = client.get("/history", query_string={"reference": "st-2"}).get_data(as_text=True)
    assert re.findall(r"<td>([^<]*\.png)</td>", page) == ["c.png"]
    today = rows(tmp_path / "data")[0]["created"][:10]
    assert "3 results" in client.get("/history", query_string={"from": today, "to": today}
                                     ).get_data(as_text=True)
    assert "0 results" in client.get("/history", query_string={"to": "2000-01-01"}
                                     ).get_data(as_text=True)
    assert client.get("/history", query_string={"from": "yesterday"}).status_code == 400
    # verdict
    resp = client.post("/result/2/verdict", data={"csrf": csrf_of(client),
                                                  "verdict": "disagree", "note": "callus"})
    assert resp.status_code == 302
    assert "Verdict saved" in client.get(resp.headers["Location"]).get_data(as_text=True)
    r2 = rows(tmp_path / "data")[1]
    assert (r2["verdict"], r2["note"]) == ("disagree", "callus") and r2["verdict_time"]
    # CSV: every row, oldest first, formula-looking names defused
    csv_resp = client.get("/history.csv")
    assert csv_resp.headers["Content-Disposition"].startswith("attachment")
    lines = csv_resp.get_data(as_text=True).splitlines()
    assert lines[0].startswith("id,created,file_name,reference,status")
    assert len(lines) == 4 and lines[1].split(",")[2] == "'=cmd.png"
    assert "disagree,callus" in lines[2]
    csv_one = client.get("/history.csv", query_string={"reference": "ST-2"}).get_data(
        as_text=True).splitlines()
    assert len(csv_one) == 2 and "c.png" in csv_one[1]


def test_rejected_result_shows_the_reason_and_no_label(models, tmp_path):
    station, client = make_client(models["gap"], tmp_path / "data")
    rid = station.store.add({"uid": "x1", "created": "2026-01-01T00:00:00+00:00",
                             "file_name": "blank.png", "stored_image": "images/x1.png",
                             "source": "upload", "status": "rejected",
                             "reason": "near-uniform frame: not a radiograph",
                             "threshold": 0.5, "model_id": "m"})
    page = client.get(f"/result/{rid}").get_data(as_text=True)
    assert "Not assessed" in page and "near-uniform frame: not a radiograph" in page
    assert "Probability of fracture" not in page
    assert "not assessed" in client.get("/history").get_data(as_text=True)


def test_a_rejected_result_offers_a_note_and_a_retake_not_a_verdict(models, tmp_path):
    station, client = make_client(models["gap"], tmp_path / "data")
    rid = station.store.add({"uid": "x2", "created": "2026-01-01T00:00:00+00:00",
                             "file_name": "blank.png", "stored_image": "images/x2.png",
                             "source": "upload", "status": "rejected",
                             "reason": "near-uniform frame", "threshold": 0.5,
                             "model_id": "m"})
    page = client.get(f"/result/{rid}").get_data(as_text=True)
    assert 'value="agree"' not in page and "Retake or rescan" in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    resp = client.post(f"/result/{rid}/verdict", data={"csrf": csrf, "verdict": "agree"})
    assert resp.status_code == 400 and "not assessed" in resp.get_data(as_text=True)
    resp = client.post(f"/result/{rid}/verdict", data={"csrf": csrf, "note": "retaken"})
    assert resp.status_code == 302 and rows(tmp_path / "data")[0]["note"] == "retaken"


def test_low_resolution_is_said_only_when_enlarged_more_than_twice(models, tmp_path):
    station, _ = make_client(models["gap"], tmp_path / "data")
    size, fit = station.clf.config.size, station.clf.config.fit
    assert not any("Low resolution" in w for w in station.warnings_for((size - 1,) * 2, None))
    low = station.warnings_for((size // 2 - 1, size // 2 - 1), None)
    assert any("Low resolution" in w and "enlarged more than twice" in w for w in low)
    # letterboxed: a narrow film scales by its long side (shrunk here, not enlarged)
    narrow = station.warnings_for((size // 4, 2 * size), None)
    assert any("Low resolution" in w for w in narrow) == (fit == "stretch")


def test_serve_makes_its_data_folder_private(models, tmp_path):
    """Patients' pictures and references were created readable by every user (0755)."""
    data = tmp_path / "station"
    proc, port, _ = start_server(models["gap"], data)
    try:
        assert (data.stat().st_mode & 0o777) == 0o700
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_forms_need_their_csrf_token_and_localhost_refuses_other_hosts(models, tmp_path):
    _, client = make_client(models["gap"], tmp_path / "data")
    resp = client.post("/upload", data={"files": [(io.BytesIO(xray_png()), "a.png")]},
                       content_type="multipart/form-data")
    assert resp.status_code == 400 and "expired" in resp.get_data(as_text=True)
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 403
    api = client.post("/api/classify", data={"files": [(io.BytesIO(xray_png()), "a.png")]},
                      content_type="multipart/form-data")
    assert api.status_code == 403  # a cross-site form cannot add X-Requested-With
    api = client.post("/api/classify", data={"files": [(io.BytesIO(xray_png()), "a.png")]},
                      content_type="multipart/form-data", headers={"X-Requested-With": "t"})
    assert api.status_code == 200 and api.json["results"][0]["file_name"] == "a.png"
    assert rows(tmp_path / "data")[0]["source"] == "api"


def test_token_is_required_beyond_localhost(models, tmp_path):
    _, client = make_client(models["gap"], tmp_path / "data", token="s3cret-token")
    resp = client.get("/history")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert client.get("/history.csv").status_code == 302
    assert client.get("/files/1/original").status_code == 302
    assert client.get("/healthz").status_code == 200
    files = {"files": [(io.BytesIO(xray_png()), "a.png")]}
    assert client.post("/api/classify", data=files,
                       content_type="multipart/form-data").status_code == 401
    resp = client.post("/api/classify", data={"files": [(io.BytesIO(xray_png()), "a.png")]},
                       content_type="multipart/form-data",
                       headers={"Authorization": "Bearer s3cret-token"})
    assert resp.status_code == 200
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    resp = client.post("/login", data={"token": "s3cret-token", "next": "/history"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/history")
    assert "a.png" in client.get("/history").get_data(as_text=True)


def test_wrong_tokens_are_refused_without_stalling_the_station(models, tmp_path,
                                                               monkeypatch):
    """Five misses from one address: 429 for it, even with the right token, for a minute;
    no worker thread sleeps (that stalled everyone), other addresses unaffected."""
    import edge_toolkit.web.app as app_module

    def no_sleeping(seconds):
        raise AssertionError(f"a request slept {seconds} s in a worker thread")

    monkeypatch.setattr(app_module.time, "sleep", no_sleeping)
    _, client = make_client(models["gap"], tmp_path / "data", token="s3cret-token")
    codes = [client.post("/login", data={"token": "wrong"}).status_code for _ in range(5)]
    assert codes == [401] * 5
    resp = client.post("/login", data={"token": "s3cret-token"})
    assert resp.status_code == 429 and "wait a minute" in resp.get_data(as_text=True)
    other = client.post("/login", data={"token": "s3cret-token"},
                        environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert other.status_code == 302


def test_every_asset_comes_from_the_package(models, tmp_path):
    _, client = make_client(models["gap"], tmp_path / "data")
    upload(client, [(xray_png(0), "a.png")])
    for url in ("/", "/history", "/result/1"):
        resp = client.get(url)
        page = resp.get_data(as_text=True)
        refs = re.findall(r'(?:src|href|action)="([^"]*)"', page)
        assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    for path in package_files():
        if path.parent.name == "static":
            assert client.get(f"/static/{path.name}").status_code == 200
    assert {p.name for p in package_files()} >= {"app.js", "style.css", "index.html"}


def test_capture_button_only_with_a_camera(models, tmp_path):
    from edge_toolkit.runtime.camera import FakeCameraSource

    pics = tmp_path / "cam"
    pics.mkdir()
    (pics / "shot.png").write_bytes(xray_png(3))
    _, client = make_client(models["gap"], tmp_path / "d1",
                            camera=lambda: FakeCameraSource(pics))
    assert 'id="capture"' in client.get("/").get_data(as_text=True)
    resp = client.post("/capture", data={"csrf": csrf_of(client), "reference": "CAM-1"})
    assert resp.status_code == 302 and "/result/1" in resp.headers["Location"]
    r = rows(tmp_path / "d1")[0]
    assert r["source"] == "capture" and r["reference"] == "CAM-1"
    _, client = make_client(models["gap"], tmp_path / "d2")
    assert 'id="capture"' not in client.get("/").get_data(as_text=True)


def test_runtime_and_cli_do_not_import_flask():
    code = ("import sys, edge_toolkit.cli, edge_toolkit.runtime.cli, edge_toolkit.runtime.heatmap\n"
            "from click.testing import CliRunner\n"
            "out = CliRunner().invoke(edge_toolkit.cli.main, ['--help']).output\n"
            "assert 'serve' in out, out\n"
            "bad = [m for m in ('flask', 'waitress', 'werkzeug') if m in sys.modules]\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("threads", ["0", "65"])
def test_serve_refuses_a_thread_count_the_interpreter_would_refuse(models, tmp_path, threads):
    from click.testing import CliRunner

    from edge_toolkit.cli import main

    res = CliRunner().invoke(main, ["serve", str(models["gap"]), "--data", str(tmp_path / "d"),
                                    "--no-camera", "--threads", threads])
    assert res.exit_code == 2 and "--threads" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "d").exists()


def test_serve_runs_under_waitress_and_stops_cleanly_on_sigterm(models, tmp_path):
    import urllib.request

    proc, port, startup = start_server(models["gap"], tmp_path / "data", "--no-camera")
    try:
        assert "localhost only" in startup
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.headers["Server"] == "edge-toolkit" and b'"ok"' in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        code = proc.wait(timeout=30)
    assert code == 0 and "stopped" in rest
    db = sqlite3.connect(tmp_path / "data" / "history.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_serve_beyond_localhost_prints_and_requires_a_token(models, tmp_path):
    import urllib.error
    import urllib.request

    proc, port, startup = start_server(models["gap"], tmp_path / "data", "--host", "0.0.0.0",
                                       "--no-camera")
    try:
        token = re.search(r"access token \(first start; kept in (\S+)\): (\S+)", startup)
        assert token, startup
        assert Path(token.group(1)).read_text().strip() == token.group(2)
        assert oct(Path(token.group(1)).stat().st_mode & 0o777) == "0o600"
        tablet = proc.stderr.readline()  # "0.0.0.0" is no address a tablet can open
        assert tablet.startswith("from a tablet: http://") and "0.0.0.0" not in tablet
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/api/classify", method="POST", data=b""), timeout=10)
        assert err.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    proc, port, startup = start_server(models["gap"], tmp_path / "data", "--host", "0.0.0.0",
                                       "--no-camera")
    proc.send_signal(signal.SIGTERM)
    proc.stderr.read()
    proc.wait(timeout=30)
    assert "access token: in" in startup and token.group(2) not in startup  # printed once


def test_an_upload_over_the_cap_gets_the_station_page_not_waitress_text(models, tmp_path):
    """waitress refuses a body over its cap before the app runs. Its cap is the app's, and its
    answer is the station's own 413 page naming the limits (JSON under /api/), whatever the
    size: before, anything over the cap plus 1 MiB got waitress's plain text."""
    import socket

    proc, port, _ = start_server(models["gap"], tmp_path / "data", "--no-camera",
                                 "--max-request-mb", "0.1", "--max-upload-mb", "0.1")
    try:
        for path, kind, text in (("/upload", "text/html", "at most 0.1 MB per upload"),
                                 ("/api/classify", "application/json",
                                  '"error": "The upload is too large: at most 0.1 MB')):
            for size in (5_000_000, 100_001):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 "Content-Type: multipart/form-data; boundary=B\r\n"
                                 f"Content-Length: {size}\r\n\r\n".encode())
                    answer = b""
                    while chunk := sock.recv(65536):
                        answer += chunk
                head, _, body = answer.decode().partition("\r\n\r\n")
                assert head.startswith("HTTP/1.1 413"), answer[:300]
                assert f"Content-Type: {kind}" in head and text in body, (path, size, answer)
                assert "waitress" not in body and "max_body" not in body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.stderr.read()
        proc.wait(timeout=30)


def test_lan_addresses_are_ipv4_and_never_loopback():
    import ipaddress

    from edge_toolkit.web.cli import lan_addresses

    for address in lan_addresses():
        ip = ipaddress.ip_address(address)
        assert ip.version == 4 and not ip.is_loopback and not ip.is_unspecified


def test_lan_addresses_do_not_wait_for_a_stuck_name_lookup(monkeypatch):
    """Without a route, the host-name lookup may wait on an unreachable name server (about
    10 s while the station was bound but not yet serving): it gets a deadline."""
    import socket
    import threading

    from edge_toolkit.web.cli import lan_addresses

    release = threading.Event()

    class NoRoute(socket.socket):
        def connect(self, address):
            raise OSError("network is unreachable")

    def stuck(*args, **kwargs):
        release.wait(30)
        return [(socket.AF_INET, 0, 0, "", ("10.1.2.3", 0))]

    monkeypatch.setattr(socket, "socket", NoRoute)
    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    try:
        assert lan_addresses(wait=0.05) == []  # given up on, not waited for
    finally:
        release.set()
    assert lan_addresses(wait=5) == ["10.1.2.3"]  # an answer in time is used
