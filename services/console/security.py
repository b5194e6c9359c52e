"""What stands between a browser and the console's actions: token, CSRF, same origin, loopback.

Environment (all optional):
    HATCHERY_CONSOLE_TOKEN    the operators' shared secret; unset or empty: the console is read-only and
                              every action is refused with the reason (403)
    HATCHERY_CONSOLE_EXPOSE   `1`: answer on a non-loopback address too (default: 404 there, whatever
                              address `bentoml serve --host` bound)

Each mutating request must carry (in this order of checks):
  1. an Origin (else a Referer) whose scheme://host:port is the request's own: a page on another site
     cannot post here even with the operator's cookies (SameSite=Strict says the same to the browser);
  2. a CSRF token equal to the one in the console's cookie (a random value per browser, set on the
     first page): a form another origin forges cannot read it;
  3. the operator token, compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from urllib.parse import urlsplit

CSRF_COOKIE = "hatchery_console_csrf"
LOOPBACK_NAMES = ("localhost",)


class Refused(Exception):
    """An action the console will not do: `status` (403, 400) and the reason shown to the operator."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def configured_token() -> str:
    """HATCHERY_CONSOLE_TOKEN ('' when unset: read-only)."""
    return os.environ.get("HATCHERY_CONSOLE_TOKEN", "").strip()


def exposed() -> bool:
    return os.environ.get("HATCHERY_CONSOLE_EXPOSE", "") == "1"


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; False for anything else (including None)."""
    if not host:
        return False
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def served_address_allowed(scope: dict) -> bool:
    """The address the connection reached (scope['server']) is loopback, or exposure is configured.

    No `server` in the scope (an in-process test client) counts as loopback: nothing listens.
    """
    server = scope.get("server")
    return exposed() or server is None or is_loopback(server[0])


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def check_same_origin(headers, scheme: str, host_header: str | None) -> None:
    """Refused(403) unless Origin (else Referer) names this very scheme://host[:port]."""
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        raise Refused(403, "refused: the request has no Origin or Referer header (same-origin requests only)")
    parts = urlsplit(source)
    if not host_header or (parts.scheme, parts.netloc) != (scheme, host_header):
        raise Refused(403, f"refused: cross-origin request from {parts.scheme}://{parts.netloc}")


def check_csrf(cookie_value: str | None, form_value: str | None) -> None:
    if not cookie_value or not form_value or not hmac.compare_digest(cookie_value, form_value):
        raise Refused(403, "refused: the form's CSRF token does not match this browser's (reload the page)")


def check_token(given: str | None) -> None:
    """Refused(403) when no token is configured (read-only) or the given one differs."""
    expected = configured_token()
    if not expected:
        raise Refused(
            403,
            "refused: the console is read-only because HATCHERY_CONSOLE_TOKEN is not set on the server; "
            "set it (and restart the service) to allow pause, resume, rollback and promote",
        )
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refused(403, "refused: wrong operator token")


# What every console page sends: no framing, no third-party anything, scripts only from /console/static.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
