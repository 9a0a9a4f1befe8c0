"""The station's pages (Flask): upload or capture, result with heatmap, history, CSV, login.

`create_app(station, settings)` builds the WSGI app; `edge-toolkit serve` runs it under
waitress. Everything the browser loads comes from this package (templates and static files):
the clinic has no internet. Pages are plain HTML forms that work without JavaScript; the one
script adds drag and drop and the heatmap opacity slider.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
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
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from edge_toolkit.web.auth import host_of, is_loopback, token_matches
from edge_toolkit.web.station import DISCLAIMER, Station, UploadError
from edge_toolkit.web.store import VERDICTS, Filters, StoreError

OPEN_ENDPOINTS = ("login", "static", "healthz")
HISTORY_PAGE = 200  # rows shown on the history page (the CSV has all)
MAX_RESULTS_SHOWN = 500  # results one results page lists
ERRORS_IN_COOKIE = 2000  # characters of upload errors carried to the results page
FORM_PARTS = 1000  # pictures and fields in one submit (Werkzeug's default, said in messages)
FORM_TEXT_BYTES = 500_000  # one text field (a reference, a note)


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
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.context_processor
    def common() -> dict[str, Any]:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(24)
        return {"disclaimer": DISCLAIMER, "station": station, "csrf": session["csrf"],
                "auth_required": auth_required, "logged_in": bool(session.get("auth")),
                "max_file_mb": station.limits.max_file_bytes / 1e6,
                "max_request_mb": settings.max_request_bytes / 1e6}

    def _message(code: int, text: str) -> Any:
        if api():
            return jsonify(error=text), code
        return render_template("message.html", code=code, text=text), code

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: Exception) -> Any:
        text = (f"The upload is too large: at most {settings.max_request_bytes / 1e6:g} MB "
                f"per upload, {station.limits.max_file_bytes / 1e6:g} MB per picture, "
                f"{FORM_PARTS} pictures and fields, {FORM_TEXT_BYTES // 1000} KB per text "
                "field.")
        if api():
            return jsonify(error=text), 413
        return render_template("index.html", errors=[text], recent=_recent()), 413

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

    def _classify_request(source: str) -> tuple[list[int], list[str]]:
        reference = request.form.get("reference")
        files = [f for key in ("files", "photo") for f in request.files.getlist(key)]
        files = [f for f in files if f.filename or f.content_length]
        if not files:
            return [], ["No picture was chosen."]
        ids, errors = [], []
        for f in files:
            try:
                ids.append(station.classify_bytes(f.filename, f.read(), reference=reference,
                                                  source=source))
            except UploadError as exc:
                errors.append(str(exc))
        return ids, errors

    @app.post("/upload")
    def upload() -> Any:
        ids, errors = _classify_request("upload")
        if not ids:
            return render_template("index.html", errors=errors, recent=_recent()), 400
        # Post/Redirect/Get: the results page is a GET of what was stored, so reloading it
        # (or going back to it) shows the same results and never uploads the files again
        session["upload_errors"] = _cookie_sized(errors)
        return redirect(url_for("results", ids=",".join(map(str, ids))), code=303)

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
                               errors=session.pop("upload_errors", []))

    @app.post("/capture")
    def capture() -> Any:
        try:
            rid = station.capture(request.form.get("reference"))
        except UploadError as exc:
            return render_template("index.html", errors=[str(exc)], recent=_recent()), 503
        return redirect(url_for("result", result_id=rid))

    @app.post("/api/classify")
    def api_classify() -> Any:
        ids, errors = _classify_request("api")
        rows = [station.store.get(i) for i in ids]
        keep = ("id", "uid", "created", "file_name", "status", "reason", "label",
                "probability", "threshold", "model_id", "warnings", "reference")
        return jsonify(results=[{k: r[k] for k in keep} for r in rows if r], errors=errors), \
            (200 if ids else 400)

    def _row_or_404(result_id: int) -> dict[str, Any]:
        row = station.store.get(result_id)
        if row is None:
            abort(404, description=f"There is no result {result_id}.")
        return row

    @app.get("/result/<int:result_id>")
    def result(result_id: int) -> Any:
        return render_template("result.html", row=_row_or_404(result_id),
                               saved=request.args.get("saved"))

    @app.post("/result/<int:result_id>/verdict")
    def verdict(result_id: int) -> Any:
        _row_or_404(result_id)
        choice = request.form.get("verdict") or None
        if choice not in (None, *VERDICTS):
            abort(400, description="The verdict must be agree or disagree.")
        note = (request.form.get("note") or "").strip()[:2000]
        station.store.set_verdict(result_id, choice, note,
                                  datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return redirect(url_for("result", result_id=result_id, saved=1))

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
