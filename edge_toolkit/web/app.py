"""The station's pages (Flask): upload or capture, result with heatmap, history, CSV, login.

`create_app(station, settings)` builds the WSGI app; `edge-toolkit serve` runs it under
waitress. Everything the browser loads comes from this package (templates and static files):
the clinic has no internet. Pages are plain HTML forms that work without JavaScript; the one
script adds drag and drop and the heatmap opacity slider.

Nothing a user sends is lost or stored twice without a word: the upload form carries a one-time
token, so a double click or a browser's re-POST shows the first submit's results instead of
storing the pictures again (SubmitOnce); a reference or note over its limit is refused with a
message, never cut; a data folder that can no longer be written fails a submit with a message
naming it while the pages that only read keep working.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from edge_toolkit.web.auth import host_of, is_loopback, token_matches
from edge_toolkit.web.station import (
    DISCLAIMER,
    Station,
    StorageError,
    UploadError,
    check_reference,
)
from edge_toolkit.web.store import VERDICTS, Filters, StoreError

OPEN_ENDPOINTS = ("login", "static", "healthz")
HISTORY_PAGE = 200  # rows shown on the history page (the CSV has all)
MAX_RESULTS_SHOWN = 500  # results one results page lists
ERRORS_IN_COOKIE = 2000  # characters of upload errors carried to the results page
FORM_PARTS = 1000  # pictures and fields in one submit (Werkzeug's default, said in messages)
FORM_TEXT_BYTES = 500_000  # one text field (a reference, a note)
MAX_NOTE = 2000  # characters of a reader's note
SUBMIT_TTL = 600.0  # seconds a submit's token is remembered
SUBMIT_WAIT = 300.0  # seconds a repeated submit waits for the first one to finish
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _cookie_sized(errors: list[str]) -> list[str]:
    """The upload's error lines, cut to fit the session cookie (browsers drop cookies over
    4 KB), with a count of those left out."""
    kept: list[str] = []
    size = 0
    for line in errors:
        # as the cookie stores it: JSON escapes a non-ASCII character as 6 bytes (\uXXXX)
        size += len(json.dumps(line))
        if size > ERRORS_IN_COOKIE:
            kept.append(f"... and {len(errors) - len(kept)} more files could not be read.")
            break
        kept.append(line)
    return kept


class LoginFailures:
    """Wrong tokens per client address over the last `window` seconds. Guessing slows by
    refusal (429 after `limit` misses), not by sleeping: a sleeping worker thread was one
    fewer for everyone, so a few wrong logins in a loop stalled the whole station."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._misses: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> list[float]:
        kept = [t for t in self._misses.get(client, []) if now - t < self.window]
        if kept:
            self._misses[client] = kept
        else:
            self._misses.pop(client, None)
        return kept

    def allows(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client, time.monotonic())) < self.limit

    def record(self, client: str) -> None:
        with self._lock:
            now = time.monotonic()
            if len(self._misses) > 10_000:  # bounded memory under a flood of addresses
                for other in list(self._misses):
                    self._recent(other, now)
            self._misses.setdefault(client, []).append(now)


@dataclass
class Outcome:
    """What one submit did: the ids it stored, the lines for the user, and the status to
    answer when it stored nothing (400: nothing usable; 503: the data folder is unwritable)."""

    ids: list[int]
    errors: list[str]
    code: int = 200


@dataclass
class _Submit:
    """One submit by key: set `done` when it finished; `outcome` only if it stored something."""

    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    at: float = field(default_factory=time.monotonic)


class SubmitOnce:
    """Submits seen in the last `ttl` seconds, by key (form token and content). A double click
    or a browser's re-POST sends one form twice: the repeat waits for the first and gets its
    outcome instead of classifying and storing every picture again. A submit that stored
    nothing is forgotten at once: sending it again is harmless."""

    def __init__(self, ttl: float = SUBMIT_TTL) -> None:
        self.ttl = ttl
        self._seen: dict[str, _Submit] = {}
        self._lock = threading.Lock()

    def claim(self, key: str) -> _Submit | None:
        """None: this request is the first with `key` and must call `finish`; else the
        earlier submit, whose `done` to wait on."""
        with self._lock:
            now = time.monotonic()
            while self._seen:  # oldest first: `finish` moves a done submit to the end
                old, entry = next(iter(self._seen.items()))
                if not (entry.done.is_set() and now - entry.at > self.ttl):
                    break
                del self._seen[old]
            earlier = self._seen.get(key)
            if earlier is None:
                self._seen[key] = _Submit()
            return earlier

    def finish(self, key: str, outcome: Outcome) -> None:
        with self._lock:
            entry = self._seen.pop(key)
            if outcome.ids:
                entry.outcome, entry.at = outcome, time.monotonic()
                self._seen[key] = entry
        entry.done.set()


def _size(f: FileStorage) -> int:
    """Bytes in an uploaded part, without reading it into memory."""
    here = f.stream.tell()
    end = f.stream.seek(0, os.SEEK_END)
    f.stream.seek(here)
    return end


def _digest(f: FileStorage) -> str:
    """SHA-256 of an uploaded part's bytes, read in blocks and rewound: a repeat is the same
    pictures, not pictures of the same name and size (two studies' IM000001 often are)."""
    here, h = f.stream.tell(), hashlib.sha256()
    f.stream.seek(0)
    for block in iter(lambda: f.stream.read(1 << 20), b""):
        h.update(block)
    f.stream.seek(here)
    return h.hexdigest()


@dataclass(frozen=True)
class Settings:
    """How the app guards itself. `token` None: loopback only, no login."""

    token: str | None
    secret_key: bytes
    max_request_bytes: int = 64 * 1024 * 1024


def create_app(station: Station, settings: Settings) -> Flask:
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=settings.max_request_bytes,
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="edge_toolkit_session", TEMPLATES_AUTO_RELOAD=False,
        SEND_FILE_MAX_AGE_DEFAULT=3600, MAX_FORM_PARTS=FORM_PARTS,
        MAX_FORM_MEMORY_SIZE=FORM_TEXT_BYTES)
    app.extensions["station"] = station
    auth_required = settings.token is not None
    failures = LoginFailures()
    submits = SubmitOnce()
    too_large_text = (
        f"The upload is too large: at most {settings.max_request_bytes / 1e6:g} MB per "
        f"upload, {station.limits.max_file_bytes / 1e6:g} MB per picture, {FORM_PARTS} "
        f"pictures and fields, {FORM_TEXT_BYTES // 1000} KB per text field.")
    app.extensions["too_large_text"] = too_large_text  # `serve` gives it to waitress too

    def api() -> bool:
        return request.path.startswith("/api/")

    def bearer_ok() -> bool:
        header = request.headers.get("Authorization", "")
        return (settings.token is not None and header.startswith("Bearer ")
                and token_matches(header[7:], settings.token))

    @app.before_request
    def guard() -> Any:
        if not auth_required and not is_loopback(host_of(request.host)):
            # bound to loopback: a request naming another host came through DNS rebinding
            return _message(403, "This station only answers on localhost.")
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        if auth_required and not (session.get("auth") or bearer_ok()):
            if api():
                return jsonify(error="a token is required: Authorization: Bearer TOKEN"), 401
            return redirect(url_for("login", next=request.full_path))
        if request.method == "POST":
            if api():
                # no cookies count here: a script sends the token, or (on localhost) a
                # header no cross-site form can add
                if not (bearer_ok() or (not auth_required
                                        and request.headers.get("X-Requested-With"))):
                    return jsonify(error="send Authorization: Bearer TOKEN (or, on "
                                         "localhost, X-Requested-With)"), 403
            elif not token_matches(request.form.get("csrf"), session.get("csrf", "")):
                return _message(400, "This form has expired: reload the page and try again.")
        return None

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.update(SECURITY_HEADERS)
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.context_processor
    def common() -> dict[str, Any]:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(24)
        # a fresh one-time token for each form rendered (remembered only once submitted)
        return {"disclaimer": DISCLAIMER, "station": station, "csrf": session["csrf"],
                "submit_token": secrets.token_urlsafe(16),
                "auth_required": auth_required, "logged_in": bool(session.get("auth")),
                "max_file_mb": station.limits.max_file_bytes / 1e6,
                "max_request_mb": settings.max_request_bytes / 1e6}

    def _message(code: int, text: str) -> Any:
        if api():
            return jsonify(error=text), code
        return render_template("message.html", code=code, text=text), code

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: Exception) -> Any:
        if api():
            return jsonify(error=too_large_text), 413
        return render_template("index.html", errors=[too_large_text], recent=_recent()), 413

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        return _message(exc.code or 500, exc.description or exc.name)

    def _recent() -> list[dict[str, Any]]:
        return station.store.query(limit=5)

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok", model=station.model_name)

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        nxt = request.values.get("next") or url_for("index")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = url_for("index")
        if not auth_required:
            return redirect(nxt)
        error, code = None, 200
        if request.method == "POST":
            client = request.remote_addr or "?"
            if not failures.allows(client):
                error, code = ("Too many wrong tokens from this computer: wait a minute and "
                               "try again."), 429
            elif token_matches(request.form.get("token"), settings.token or ""):
                session.clear()
                session["auth"] = True
                session.permanent = True
                return redirect(nxt)
            else:
                failures.record(client)
                error, code = "That is not this station's token.", 401
        return render_template("login.html", error=error, next=nxt), code

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def index() -> Any:
        return render_template("index.html", errors=[], recent=_recent())

    def _pictures() -> list[FileStorage]:
        """The submit's pictures. A file input left empty sends a part with neither a name
        nor bytes: skipped. A part with bytes but no file name is a picture all the same."""
        parts = [f for key in ("files", "photo") for f in request.files.getlist(key)]
        return [f for f in parts if f.filename or _size(f)]

    def _no_pictures() -> str:
        if not api():
            return ("No picture was chosen: choose one or more pictures (or take a photo), "
                    "then press Classify.")
        as_text = [k for k in ("files", "photo") if k in request.form]
        hint = (f" ('{as_text[0]}' came as a text field: with curl, -F {as_text[0]}=@PATH)"
                if as_text else "")
        return f"No picture in the request: send each as a multipart file named 'files'{hint}."

    def _classify_request(source: str, files: list[FileStorage]) -> Outcome:
        try:
            reference = check_reference(request.form.get("reference"))
        except UploadError as exc:
            return Outcome([], [str(exc)], 400)
        if not files:
            return Outcome([], [_no_pictures()], 400)
        out = Outcome([], [])
        for i, f in enumerate(files):
            try:
                out.ids.append(station.classify_bytes(f.filename, f.read(),
                                                      reference=reference, source=source))
            except StorageError as exc:  # every later picture would fail the same way
                left = len(files) - i - 1
                out.errors.append(str(exc) + (f" The {left} picture(s) after it were not "
                                              "classified." if left else ""))
                out.code = 503
                break
            except UploadError as exc:
                out.errors.append(str(exc))
        if not out.ids and out.code == 200:
            out.code = 400
        return out

    def _submit_key(kind: str, files: list[FileStorage]) -> str | None:
        """The form's one-time token with what it sent (session, reference, each picture's
        name and bytes), so a form reused with other pictures is a new submit; None when no
        token came (scripts may leave it out)."""
        token = request.form.get("submit_token")
        if not token:
            return None
        h = hashlib.sha256()
        for part in (kind, session.get("csrf", ""), token, request.form.get("reference") or "",
                     *(f"{f.filename}:{_digest(f)}" for f in files)):
            h.update(part.encode("utf-8", "replace") + b"\0")
        return h.hexdigest()

    def _once(key: str | None, work: Callable[[], Outcome]) -> tuple[Outcome, bool]:
        """`work()`, or, for a repeat of a submit that stored something, that submit's
        outcome (after waiting for it to finish) and True."""
        while key is not None:
            earlier = submits.claim(key)
            if earlier is None:
                out = Outcome([], [], 500)
                try:
                    out = work()
                finally:
                    submits.finish(key, out)
                return out, False
            if not earlier.done.wait(SUBMIT_WAIT):
                return Outcome([], ["This form was sent twice and the first is still being "
                                    "classified: see the History page in a few minutes."],
                               409), True
            if earlier.outcome is not None:
                return earlier.outcome, True
            # the first stored nothing and was forgotten: run this one
        return work(), False

    @app.post("/upload")
    def upload() -> Any:
        files = _pictures()
        out, repeat = _once(_submit_key("upload", files),
                            lambda: _classify_request("upload", files))
        if not out.ids:
            return render_template("index.html", errors=out.errors, recent=_recent(),
                                   reference=request.form.get("reference")), out.code
        # Post/Redirect/Get: the results page is a GET of what was stored, so reloading it
        # (or going back to it) shows the same results and never uploads the files again
        session["upload_errors"] = _cookie_sized(out.errors)
        args = {"ids": ",".join(map(str, out.ids)), **({"again": 1} if repeat else {})}
        return redirect(url_for("results", **args), code=303)

    @app.get("/results")
    def results() -> Any:
        try:
            ids = [int(i) for i in request.args.get("ids", "").split(",") if i]
        except ValueError:
            abort(400, description="The result numbers must be whole numbers.")
        rows = [r for r in (station.store.get(i) for i in ids[:MAX_RESULTS_SHOWN]) if r]
        if not rows:
            abort(404, description="There are no such results.")
        return render_template("results.html", rows=rows, saved=len(ids),
                               errors=session.pop("upload_errors", []),
                               again=bool(request.args.get("again")))

    @app.post("/capture")
    def capture() -> Any:
        typed = request.form.get("reference")
        try:
            reference = check_reference(typed)
        except UploadError as exc:
            return render_template("index.html", errors=[str(exc)], recent=_recent(),
                                   reference=typed), 400
        try:
            rid = station.capture(reference)
        except UploadError as exc:
            return render_template("index.html", errors=[str(exc)], recent=_recent()), 503
        return redirect(url_for("result", result_id=rid))

    @app.post("/api/classify")
    def api_classify() -> Any:
        files = _pictures()
        out, repeat = _once(_submit_key("api", files), lambda: _classify_request("api", files))
        rows = [station.store.get(i) for i in out.ids]
        keep = ("id", "uid", "created", "file_name", "status", "reason", "label",
                "probability", "threshold", "model_id", "warnings", "reference")
        body: dict[str, Any] = {"results": [{k: r[k] for k in keep} for r in rows if r],
                                "errors": out.errors}
        if repeat:
            body["repeat"] = True
        return jsonify(body), (200 if out.ids else out.code)

    def _row_or_404(result_id: int) -> dict[str, Any]:
        row = station.store.get(result_id)
        if row is None:
            abort(404, description=f"There is no result {result_id}.")
        return row

    @app.get("/result/<int:result_id>")
    def result(result_id: int) -> Any:
        row = _row_or_404(result_id)
        return render_template("result.html", row=row, saved=request.args.get("saved"),
                               form_verdict=row["verdict"], form_note=row["note"])

    @app.post("/result/<int:result_id>/verdict")
    def verdict(result_id: int) -> Any:
        row = _row_or_404(result_id)
        choice = request.form.get("verdict") or None
        if choice not in (None, *VERDICTS):
            abort(400, description="The verdict must be agree or disagree.")
        if choice is not None and row["status"] == "rejected":
            abort(400, description="This picture was not assessed: there is no label to "
                                   "agree or disagree with. Save a note instead.")
        # browsers send a textarea's line breaks as CRLF but count each as one character
        note = (request.form.get("note") or "").replace("\r\n", "\n").strip()
        if len(note) > MAX_NOTE:  # refused, not cut: the reader's words stay in the form
            error, code = (f"The note is {len(note)} characters long; at most {MAX_NOTE} are "
                           "allowed. Shorten it and save again (nothing was saved)."), 400
        else:
            try:
                station.store.set_verdict(
                    result_id, choice, note,
                    datetime.now(timezone.utc).isoformat(timespec="seconds"))
                return redirect(url_for("result", result_id=result_id, saved=1))
            except (OSError, sqlite3.Error) as exc:
                error, code = (f"{station.storage_problem(exc)}. The verdict was not saved; "
                               "your note is kept below."), 503
        return render_template("result.html", row=row, error=error, form_verdict=choice,
                               form_note=note), code

    @app.get("/files/<int:result_id>/<kind>")
    def files(result_id: int, kind: str) -> Any:
        row = _row_or_404(result_id)
        column = {"display.png": "display", "heat.png": "heatmap",
                  "original": "stored_image"}.get(kind)
        path = station.path_of(row.get(column)) if column else None
        if path is None:
            abort(404)
        if kind == "original":
            return send_file(path, mimetype="application/octet-stream", as_attachment=True,
                             download_name=row["file_name"])
        resp = send_file(path, mimetype="image/png", max_age=3600)
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

    def _filters() -> Filters:
        try:
            return Filters.from_args(request.args)
        except StoreError as exc:
            abort(400, description=str(exc))

    @app.get("/history")
    def history() -> Any:
        f = _filters()
        return render_template("history.html", rows=station.store.query(f, HISTORY_PAGE),
                               total=station.store.count(f), filters=f,
                               labels=station.store.labels() or list(station.clf.card.labels),
                               page=HISTORY_PAGE)

    @app.get("/history.csv")
    def history_csv() -> Any:
        f = _filters()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return Response(station.store.csv_text(f), mimetype="text/csv",
                        headers={"Content-Disposition":
                                 f'attachment; filename="history-{stamp}.csv"'})

    @app.template_filter("pct")
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    @app.template_filter("local")
    def local(value: str | None) -> str:
        return (value or "").replace("T", " ").replace("+00:00", " UTC")

    return app


def package_files() -> list[Path]:
    """Every template and static file the pages use (all shipped in the package)."""
    here = Path(__file__).parent
    return sorted(p for d in ("templates", "static") for p in (here / d).iterdir())
