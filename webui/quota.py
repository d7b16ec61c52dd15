"""The disk space uploads may take, checked before Gradio stores one (ASGI middleware).

Gradio caps each file (`max_file_size`, PEFT_STUDIO_MAX_UPLOAD_MB) but not how many: a
page could upload file after file until the disk is full, and the training runs beside
them fail. Uploads wait in Gradio's upload folder until they are added as a dataset (the
registry copies them into data/) or deleted an hour later (webui.app.DELETE_UPLOADS). So
an upload is refused, with a 413 saying why, when what waits there plus the request's
size would pass the quota (PEFT_STUDIO_UPLOAD_QUOTA_MB, default 4096), or when the disk
lacks room for it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

QUOTA_ENV = "PEFT_STUDIO_UPLOAD_QUOTA_MB"
DEFAULT_QUOTA_MB = 4096


def quota_mb() -> int:
    """The upload quota in MiB: PEFT_STUDIO_UPLOAD_QUOTA_MB, else 4096."""
    try:
        value = int(os.environ.get(QUOTA_ENV, DEFAULT_QUOTA_MB))
    except ValueError:
        return DEFAULT_QUOTA_MB
    return value if value > 0 else DEFAULT_QUOTA_MB


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it does not exist yet)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # deleted meanwhile
                pass
    return total


def refusal(folder: Path, incoming: int, quota: int) -> str | None:
    """Why an upload of `incoming` bytes into `folder` is refused, or None."""
    waiting = folder_bytes(folder)
    mb = 2**20
    if waiting + incoming > quota:
        return (f"the upload space is full: {waiting / mb:.0f} MB of uploads wait to be added "
                f"and this one is {incoming / mb:.1f} MB, over the {quota / mb:.0f} MB quota "
                f"({QUOTA_ENV}). Uploads are deleted once added as a dataset or after an "
                "hour: add or discard the ones waiting, or restart the server with a larger "
                f"{QUOTA_ENV}")
    probe = folder if folder.exists() else folder.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return None
    if incoming > free:
        return (f"no room for this upload: it is {incoming / mb:.1f} MB and the disk of "
                f"{folder} has {free / mb:.1f} MB free; free some space and upload again")
    return None


class UploadQuota:
    """ASGI middleware refusing uploads beyond the quota (built by Starlette as
    Middleware(UploadQuota, folder=..., quota=...))."""

    def __init__(self, app: Any, folder: str | Path, quota: int) -> None:
        self.app = app
        self.folder = Path(folder)
        self.quota = quota

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" \
                and scope.get("path", "").rstrip("/").endswith("/upload"):
            headers = dict(scope.get("headers", []))
            length = headers.get(b"content-length", b"0")
            incoming = int(length) if length.isdigit() else 0
            why = refusal(self.folder, incoming, self.quota)
            if why:
                # Read (and drop) what the client is still sending first: answering mid-
                # upload makes the server close a connection with unread data, and the
                # client sees a reset instead of the 413 and its reason.
                while (await receive()).get("more_body"):
                    pass
                body = json.dumps({"error": why, "detail": why}).encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
