"""Who may use the station: nobody but this machine, unless they know the token.

Bound to a loopback address the page is open (only this device can reach it) but checks the
Host header, so a web page elsewhere cannot reach it through DNS rebinding. Bound to any other
address, every page but the login needs the token: typed once into the login form (then a
session cookie, HttpOnly, SameSite=Strict) or sent as `Authorization: Bearer TOKEN` by scripts.
The token is generated at first start and kept in the data folder (mode 0600), or read from
`--token-file`. No Flask here.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

LOOPBACK_NAMES = ("localhost",)
TOKEN_FILE = "token"
SECRET_FILE = "session.key"


class AuthError(ValueError):
    """The token file is missing, unreadable or empty; the message says which."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header ("127.0.0.1:8080", "[::1]:80", "localhost")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def load_or_create_token(data_dir: Path, token_file: Path | None = None
                         ) -> tuple[str, Path, bool]:
    """(token, where it is kept, whether it was just created)."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise AuthError(f"{token_file}: cannot read token file ({exc.strerror or exc})"
                            ) from None
        if len(token) < 8:
            raise AuthError(f"{token_file}: the token must be at least 8 characters")
        return token, token_file, False
    path = data_dir / TOKEN_FILE
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token, path, False
        path.unlink()
    token = secrets.token_urlsafe(18)
    _write_private(path, token + "\n")
    return token, path, True


def load_or_create_secret(data_dir: Path) -> bytes:
    """The session-signing key, kept so logins survive a restart."""
    path = data_dir / SECRET_FILE
    if path.is_file():
        key = path.read_bytes()
        if len(key) >= 32:
            return key
        path.unlink()
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.strip().encode(), token.encode())
