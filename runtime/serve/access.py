"""Who may use the live view: the token, and the Host/Origin checks against DNS rebinding.

The token travels as the header `X-Edgedet-Token`, the query `?token=`, or the cookie the page
sets when opened from the start-up URL. With a non-loopback bind, or whenever a token was given
on purpose, every endpoint but `/healthz` needs it; on loopback with a generated token only
prompt changes do. A request whose `Host` is not a name of this server (a rebinding page names
its own domain) or whose `Origin` is another site is refused before any of that.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import string
from pathlib import Path
from typing import Iterable, Optional, Tuple
from urllib.parse import urlsplit

TOKEN_ENV = "EDGEDET_SERVE_TOKEN"
TOKEN_HEADER = "X-Edgedet-Token"
_TOKEN_CHARS = set(string.ascii_letters + string.digits + "-._~")


def check_token(token: str, where: str) -> str:
    if not token or len(token) > 256 or not set(token) <= _TOKEN_CHARS:
        raise ValueError(f"the token from {where} must be 1 to 256 of A-Z a-z 0-9 - . _ ~ (it goes into URLs and headers)")
    return token


def resolve_token(token: Optional[str] = None, token_file: Optional[str] = None, env: Optional[dict] = None) -> Tuple[Optional[str], str]:
    """(token or None, where it came from): --token, else --token-file, else $EDGEDET_SERVE_TOKEN, else None."""
    env = os.environ if env is None else env
    if token and token_file:
        raise ValueError("give the token once: --token or --token-file, not both")
    if token:
        return check_token(token, "--token"), "--token"
    if token_file:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the token file {path}: {getattr(e, 'strerror', None) or e}") from e
        return check_token(text, f"the token file {path}"), str(path)
    if env.get(TOKEN_ENV):
        return check_token(env[TOKEN_ENV].strip(), f"${TOKEN_ENV}"), f"${TOKEN_ENV}"
    return None, ""


def _ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_name(netloc: str) -> str:
    """'Example.com:8080' | '[::1]:80' | '10.0.0.2' -> the lower-case host without port or brackets."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


class AccessGuard:
    """Decides per request: None (allowed) or (HTTP status, one-line reason)."""

    def __init__(self, token: str, bind_host: str, require_token: bool, allowed_hosts: Iterable[str] = ()):
        self.token = token
        self._token_bytes = token.encode("utf-8")
        self.require_token = require_token
        self.cookie = None  # set by the server once its port is known
        bind = _ip(bind_host)
        self.any_ip = bind is not None and bind.is_unspecified  # 0.0.0.0 / ::: reached by any of this machine's addresses
        names = {host_name(bind_host), "localhost", "127.0.0.1", "::1"}
        if bind is None or not bind.is_loopback:
            hostname = socket.gethostname().lower()
            names |= {hostname, f"{hostname}.local"}
        self.hosts = names | {h.lower() for h in allowed_hosts}

    def host_allowed(self, host_header: str) -> bool:
        name = host_name(host_header or "")
        if name in self.hosts:
            return True
        # A rebinding page always names its own domain; an address literal cannot be rebound.
        return self.any_ip and _ip(name) is not None

    def token_ok(self, given: str) -> bool:
        # bytes: compare_digest refuses non-ASCII str (a TypeError, i.e. a 500) and leaks nothing by timing
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._token_bytes)

    def given_token(self, request) -> str:
        return (request.headers.get(TOKEN_HEADER) or request.query.get("token")
                or (request.cookies.get(self.cookie) if self.cookie else None) or "")

    def refuse(self, request, needs_token: bool, token_free: bool = False) -> Optional[Tuple[int, str]]:
        host = request.headers.get("Host", "")
        if not self.host_allowed(host):
            return 403, (f"Host {host!r} is not this server's address (a guard against DNS rebinding); open the URL "
                         "printed at start-up, or start with --allow-host NAME")
        origin = request.headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
                return 403, f"requests from the page of {origin!r} are refused (only this server's own page may call it)"
        if (needs_token or self.require_token) and not token_free and not self.token_ok(self.given_token(request)):
            return 401, "missing or wrong token: open the URL printed at start-up (…/?token=...)"
        return None
