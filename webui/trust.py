"""Which requests the served app answers at all, before Gradio sees them (ASGI middleware).

A studio on localhost is reachable by every web page its user visits: a page can make the
browser send requests to 127.0.0.1, and with DNS rebinding (a name of the attacker's that
resolves to 127.0.0.1) even read the answers. The login does not help against a page
that rides on the user's own session. So:

- **Host**: only names the server was started for. Loopback names and IP literals always
  (a rebinding attack needs a name of the attacker's; an address is what the user typed),
  the `--host` name, and each `--allowed-host`. Anything else gets 403, which is what
  defeats DNS rebinding.
- **Origin**: a request a browser sends from another page carries that page's Origin;
  it is answered only from the app's own origin (the one its Host names) or an
  `--allowed-origin`. Requests without an Origin (curl, scripts, gradio_client) are not
  a page's, and pass. This also covers uploads, which a cross-site form may send
  without any preflight.
- **The login cookie** is made `SameSite=Lax` (Gradio sets `None`), so a cross-site
  request never carries it.
- **The login page** (what anyone reaching the port sees before logging in) carries no
  description of the API: Gradio embeds it there (with every dropdown's choices: run
  and dataset names) whatever the login.
- **Failed logins** are slowed per client address: after `FREE_FAILURES`, each further
  attempt must wait twice as long as the last (up to `MAX_WAIT`), answered 429 with
  Retry-After meanwhile; every failure is logged with the client's address.

Written as middleware because Gradio 6 has no setting for any of these (its CORS
middleware reflects localhost origins only, and nothing checks the Host).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from core.serve import hosts

FREE_FAILURES = 3
MAX_WAIT = 60.0


@dataclass
class Trust:
    """The Host names and Origins one served app answers."""

    host: str = "127.0.0.1"  # what it was started with (--host)
    allowed_hosts: tuple[str, ...] = ()  # --allowed-host
    allowed_origins: tuple[str, ...] = ()  # --allowed-origin, as scheme://host[:port]
    share: bool = False  # a gradio.live link forwards its own name
    login: bool = False  # a login guards the app (its login page must say nothing)
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def host_allowed(self, header: str) -> bool:
        return hosts.host_allowed(header, self.host, self.allowed_hosts, self.share)

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        return hosts.origin_allowed(origin, host_header, self.allowed_origins)

    # -- failed logins, per client address ------------------------------------------------
    def wait_for(self, client: str, now: float) -> float:
        """Seconds this client must still wait before its next login attempt."""
        with self._lock:
            count, last = self._failures.get(client, (0, 0.0))
        if count < FREE_FAILURES:
            return 0.0
        return max(0.0, last + min(MAX_WAIT, 2.0 ** (count - FREE_FAILURES)) - now)

    def login_failed(self, client: str, now: float) -> int:
        with self._lock:
            count = self._failures.get(client, (0, 0.0))[0] + 1
            self._failures[client] = (count, now)
        return count

    def login_succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


class TrustMiddleware:
    """ASGI middleware enforcing a `Trust` (Starlette builds it as Middleware(cls, trust=...))."""

    def __init__(self, app: Any, trust: Trust) -> None:
        self.app = app
        self.trust = trust

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.trust.host_allowed(host):
            await _refuse(scope, send, 403, f"Host {host[:100]!r} is not one this studio "
                          "serves; start it with --allowed-host NAME to serve that name")
            return
        origin = headers.get("origin")
        if origin is not None and not self.trust.origin_allowed(origin, host):
            await _refuse(scope, send, 403, f"requests from {origin[:100]!r} are refused: "
                          "only the studio's own pages may use it (or an --allowed-origin)")
            return
        if scope["type"] == "http" and scope.get("method") == "POST" \
                and scope.get("path", "").rstrip("/").endswith("/login"):
            await self._login(scope, receive, send)
            return
        if self.trust.login and scope["type"] == "http" and scope.get("method") == "GET" \
                and (scope.get("path", "/") == "/" or scope["path"].rstrip("/").endswith("/runs")):
            await self.app(scope, receive, _no_api_before_login(_lax_cookies(send)))
            return
        await self.app(scope, receive, _lax_cookies(send))

    async def _login(self, scope: dict, receive: Any, send: Any) -> None:
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.trust.wait_for(client, time.time())
        if wait > 0:
            await _refuse(scope, send, 429, f"too many failed logins from {client}; try again "
                          f"in {wait:.0f} s", {"retry-after": str(int(wait) + 1)})
            return
        lax = _lax_cookies(send)

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 200:
                    self.trust.login_succeeded(client)
                else:
                    count = self.trust.login_failed(client, time.time())
                    print(f"login failed from {client} ({count} in a row)", file=sys.stderr,
                          flush=True)
            await lax(message)

        await self.app(scope, receive, watch)


_LOGIN_PAGE = b'window.gradio_config = {"auth_required":true'
_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)


def _no_api_before_login(send: Any) -> Any:
    """The page HTML, held back whole, with the API description taken out when it is the
    login page (the config of a logged-out visitor says auth_required)."""
    start: dict[str, Any] = {}
    body = bytearray()

    async def hold(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body"):
            return
        data = bytes(body)
        if _LOGIN_PAGE in data:
            data = _API_INFO.sub(b"window.gradio_api_info = null;</script>", data, count=1)
        start["headers"] = [(k, str(len(data)).encode()) if k.lower() == b"content-length"
                            else (k, v) for k, v in start.get("headers", [])]
        await send(start)
        await send({"type": "http.response.body", "body": data})

    return hold


def _lax_cookies(send: Any) -> Any:
    async def rewrite(message: dict) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                (k, v.replace(b"SameSite=none", b"SameSite=lax")
                 .replace(b"samesite=none", b"samesite=lax")) if k.lower() == b"set-cookie"
                else (k, v)
                for k, v in message.get("headers", [])]
        await send(message)

    return rewrite


async def _refuse(scope: dict, send: Any, status: int, why: str,
                  extra: dict[str, str] | None = None) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": why}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               *((k.encode(), v.encode()) for k, v in (extra or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
