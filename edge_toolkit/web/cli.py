"""`edge-toolkit serve`: the clinic station under waitress
(needs `pip install 'fracture-edge-toolkit[web]'`).

Flask and waitress are imported only inside the command, so the rest of the CLI (and the
device runtime) never needs them. SIGTERM (systemd stop) and Ctrl-C stop the server cleanly:
no new connections, requests in progress finish (each result is committed before its page is
sent), then the process exits 0.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click

from edge_toolkit.runtime.interpreter import MAX_THREADS

WEB_HINT = "the web station needs its extra: pip install 'fracture-edge-toolkit[web]'"


class ServeError(click.ClickException):
    exit_code = 2


def _answer_too_large_as_the_station(socket_map: dict[Any, Any], app: Any) -> None:
    """waitress refuses a body over its cap itself, before the app runs, with a bare
    plain-text 413: make that answer the station's own 413 page naming the limits (JSON under
    /api/), the same text the app gives, so an oversized upload always gets it."""
    from flask import render_template
    from waitress.channel import HTTPChannel
    from waitress.server import BaseWSGIServer
    from waitress.task import ErrorTask

    from edge_toolkit.web.app import SECURITY_HEADERS

    for cls, name in ((HTTPChannel, "error_task_class"), (ErrorTask, "set_close_on_finish"),
                      (ErrorTask, "write")):
        if not hasattr(cls, name):
            raise AttributeError(f"waitress {cls.__name__} has no {name}")
    text = app.extensions["too_large_text"]
    with app.test_request_context("/"):
        page = render_template("message.html", code=413, text=text).encode()
    as_json = json.dumps({"error": text}).encode()

    class StationErrorTask(ErrorTask):
        def execute(self) -> None:
            if getattr(self.request.error, "code", None) != 413:
                return super().execute()
            api = (getattr(self.request, "path", "") or "").startswith("/api/")
            body = as_json if api else page
            self.status = "413 Request Entity Too Large"
            self.response_headers.extend([
                ("Content-Type", "application/json" if api else "text/html; charset=utf-8"),
                ("Cache-Control", "no-store"), *SECURITY_HEADERS.items()])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)
            return None

    channel = type("StationChannel", (HTTPChannel,), {"error_task_class": StationErrorTask})
    for server in socket_map.values():
        if isinstance(server, BaseWSGIServer):
            server.channel_class = channel


def _camera_factory(fake: str | None, enabled: bool) -> Any:
    """A function opening the camera for one capture, or None when there is none to open."""
    if not enabled:
        return None
    from edge_toolkit.runtime.camera import CameraError, open_camera

    try:
        open_camera(fake, warmup=0.0).close()  # is one there at all?
    except CameraError:
        return None
    return lambda: open_camera(fake, warmup=0.5)


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback requires the token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("station-data"), show_default=True,
              help="Folder for the history database, the pictures and the token.")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Read the access token from this file [default: generated at first start "
                   "into DATA/token].")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.1), default=20.0,
              show_default=True, help="Largest picture accepted.")
@click.option("--max-request-mb", type=click.FloatRange(min=0.1), default=64.0,
              show_default=True, help="Largest upload (all pictures of one submit).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Largest picture in pixels (pixel bombs) [default: the card's limit].")
@click.option("--threshold", metavar="P|NAME",
              help="Decision threshold: a probability, or an operating point in the card.")
@click.option("-t", "--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help="Interpreter threads [default: all cores, up to 4].")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Web server threads (requests handled at once).")
@click.option("--camera/--no-camera", default=True, show_default=True,
              help="Offer a Capture button when a Pi camera is attached.")
@click.option("--gate/--no-gate", default=True, show_default=True,
              help="Input gate: refuse what is not a usable radiograph (no label, the "
                   "reason in the history).")
@click.option("--fake-camera", hidden=True, metavar="PATH",
              help="Replay images from PATH as the camera (tests, demos).")
def serve(model: Path | None, host: str, port: int, data_dir: Path, token_file: Path | None,
          max_upload_mb: float, max_request_mb: float, max_pixels: int | None,
          threshold: str | None, threads: int | None, workers: int, camera: bool,
          gate: bool, fake_camera: str | None) -> None:
    """Serve the clinic station: upload or capture X-rays in a browser, see the result
    with its heatmap, keep a history (SQLite) with the reader's verdicts, export CSV.

    MODEL defaults to the model bundled with the package. Listens on 127.0.0.1 unless
    --host says otherwise; beyond localhost every page needs the token. Decision support
    for a trained reader, not a diagnosis.
    """
    try:
        import flask  # noqa: F401
        from waitress.server import create_server
    except ImportError:
        raise ServeError(WEB_HINT) from None
    from edge_toolkit.runtime.cli import load_classifier
    from edge_toolkit.runtime.interpreter import default_threads
    from edge_toolkit.web.app import Settings, create_app
    from edge_toolkit.web.auth import (
        AuthError,
        is_loopback,
        load_or_create_secret,
        load_or_create_token,
    )
    from edge_toolkit.web.station import Limits, Station
    from edge_toolkit.web.store import StoreError

    if model is None:
        from edge_toolkit.runtime.bundled import NoBundledModelError, bundled_model

        try:
            model = bundled_model()
        except NoBundledModelError as exc:
            raise ServeError(str(exc)) from None
    clf = load_classifier(model, threads or default_threads(), threshold, gate=gate)
    try:
        # pictures and references of patients: only the station's own user reads them
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        limits = Limits(max_file_bytes=int(max_upload_mb * 1e6),
                        max_pixels=max_pixels or clf.config.max_pixels)
        station = Station(clf, data_dir, limits, _camera_factory(fake_camera, camera))
        token, where, created = None, None, False
        if not is_loopback(host):
            token, where, created = load_or_create_token(data_dir, token_file)
        secret = load_or_create_secret(data_dir)
    except (OSError, StoreError, AuthError) as exc:
        raise ServeError(f"{data_dir}: {getattr(exc, 'strerror', None) or exc}") from None
    except sqlite3.Error as exc:  # a damaged history file, or one on a read-only disk
        raise ServeError(f"{data_dir / 'history.sqlite'}: cannot open the history ({exc})"
                         ) from None
    max_request = int(max(max_request_mb, max_upload_mb) * 1e6)
    app = create_app(station, Settings(token=token, secret_key=secret,
                                       max_request_bytes=max_request))
    socket_map: dict[Any, Any] = {}
    try:
        # waitress reads the whole body before the app runs: its cap is the app's (it refuses
        # a length >= its cap, Flask one > max_request), so nothing over the limit is spooled
        server = create_server(app, map=socket_map, host=host, port=port, threads=workers,
                               max_request_body_size=max_request + 1,
                               ident="edge-toolkit", clear_untrusted_proxy_headers=True)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    try:  # waitress internals (checked with 3.0): where they differ, its plain 413 stays
        _answer_too_large_as_the_station(socket_map, app)
    except (ImportError, AttributeError, TypeError) as exc:
        click.echo(f"note: uploads over the cap get waitress's plain answer ({exc})", err=True)
    bound = server.effective_port
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"edge-toolkit station: {station.model_name}", err=True)
    click.echo(f"data (history, pictures): {data_dir.resolve()}", err=True)
    if token is None:
        click.echo("localhost only: no token needed", err=True)
    elif created:
        click.echo(f"access token (first start; kept in {where}): {token}", err=True)
    else:
        click.echo(f"access token: in {where}", err=True)
    click.echo(f"serving on http://{shown}:{bound}/ (Ctrl-C or SIGTERM to stop)", err=True)
    if host in WILDCARD_HOSTS:  # "0.0.0.0" is no address a tablet can open
        found = lan_addresses()
        click.echo("from a tablet: " + (" or ".join(f"http://{a}:{bound}/" for a in found)
                                        if found else "http://ADDRESS:PORT/ with an address "
                                        "that `hostname -I` prints"), err=True)
    sys.stderr.flush()

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()  # stop accepting
        server.task_dispatcher.shutdown(cancel_pending=False, timeout=10)
        click.echo("stopped", err=True)


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def lan_addresses(wait: float = 1.0) -> list[str]:
    """This machine's IPv4 addresses other than loopback: the source address of the default
    route (a UDP `connect` to a documentation address picks a route and sends nothing),
    else the host name's addresses, looked up in a thread for at most `wait` seconds (a
    lookup that goes to an unreachable name server would stall the start for about 10 s)."""
    import ipaddress
    import socket
    import threading

    def usable(addresses: set[str]) -> list[str]:
        return sorted(a for a in addresses if not ipaddress.ip_address(a).is_loopback
                      and not ipaddress.ip_address(a).is_unspecified)

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached
            found = usable({probe.getsockname()[0]})
    except OSError:
        found = []
    if found:
        return found
    named: set[str] = set()

    def look_up() -> None:
        try:
            named.update(info[4][0] for info in socket.getaddrinfo(
                socket.gethostname(), None, socket.AF_INET))
        except OSError:
            pass

    worker = threading.Thread(target=look_up, daemon=True)
    worker.start()
    worker.join(wait)
    return usable(set(named)) if not worker.is_alive() else []
