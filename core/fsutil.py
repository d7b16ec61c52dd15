"""Files written whole or not at all.

A settings file, process.json or a results table that a crash, a kill or a full disk cuts
in half would be read later as garbage (or worse, as a shorter valid file). Every such
file is written to a temporary sibling, flushed to disk, and renamed over the target:
rename within one folder is atomic, so readers see the old file or the new one, never a
part.

Also the file locks that jobs share (flock: the kernel drops one when its holder dies, even
by SIGKILL, so a crash never leaves a lock taken for ever).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DiskFull(OSError):
    """The disk filled up while writing; the message names the path and what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; on any failure the old file (if any) is kept
    and no temporary file is left behind."""
    path = Path(path)
    tmp = _sibling(path)
    # os.open with 0o666 honours the umask, as a plain open() would (mkstemp gives 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sibling(path: Path) -> Path:
    """A hidden temporary name beside `path`, unique to this process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a full disk or exceeded quota. safetensors
    and tokenizers wrap the OSError in their own errors, so their text is checked too."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "os error 28" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def copy_whole(src: str | Path, target: str | Path) -> None:
    """Copy a file whole or not at all: into a temporary sibling, then renamed over the
    target; on any failure nothing is left behind (a full disk stays as full as it was),
    and a full disk is said as `disk_full`."""
    target = Path(target)
    tmp = _sibling(target)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(target, "and add the file again") from None
        raise


def disk_full(path: str | Path, then: str = "and start the run again") -> DiskFull:
    """The error to raise for a full disk while writing `path`."""
    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(errno.ENOSPC, f"disk full writing {path} ({free}): free some space, or "
                    f"point PEFT_STUDIO_SAVES at a bigger disk, {then}")


def unique_dir(parent: Path, base: str) -> Path:
    """Create parent/base, or parent/base-2, -3, ... if taken: a job never reuses a folder."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = parent / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free folder name for {base!r} in {parent}")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_held(path: Path) -> bool:
    """Whether another process holds the lock on the file `path` (False if there is none)."""
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
