"""Which Host names and Origins a server of ours answers: the web UI (webui/trust.py) and
the OpenAI-compatible endpoint (core/serve/app.py) apply the same rules, written here
once. Why these rules (DNS rebinding, pages riding on a user's session) is told in
webui/trust.py.

- Host: loopback names and IP literals always, the name the server was started on, and
  each name it was told to allow; anything else is refused.
- Origin: a browser's request from another page is answered only from the server's own
  origin (the one its Host names) or an allowed origin; requests without an Origin
  (curl, scripts, SDKs) are not a page's and pass.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
WILDCARDS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    host = (host or "").strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host name in a Host header, without its port; "" when it is not one."""
    text = (host_header or "").strip().lower()
    if text.startswith("["):  # [::1]:7860
        end = text.find("]")
        return text[1:end] if end > 0 else ""
    name, _, port = text.partition(":")
    if port and not port.isdigit():
        return ""
    return name


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(header: str, served_on: str, allowed: tuple[str, ...] = (),
                 share: bool = False) -> bool:
    """Whether a request with this Host header is answered by a server started on
    `served_on` (its --host) that also answers the names in `allowed`."""
    name = host_name(header)
    if not name:
        return False
    if is_loopback(name) or is_address(name):
        return True
    if name == served_on.lower() and served_on not in WILDCARDS:
        return True
    if share and name.endswith(".gradio.live"):
        return True
    return name in {h.lower() for h in allowed}


def origin_allowed(origin: str, host_header: str, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a page of `origin` may use the server its Host header names."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc:
        return False  # "null" (a sandboxed frame, a file) or garbage
    if parts.netloc.lower() == host_header.strip().lower():
        return True  # the server's own pages
    wanted = origin.strip().rstrip("/").lower()
    return wanted in {o.rstrip("/").lower() for o in allowed}
