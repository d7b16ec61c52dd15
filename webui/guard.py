"""Who may use the browser app, and what the browser may ask for.

Light on purpose (no Gradio import): `peft-studio webui` checks the host and the login
here before anything is built, so a refused start binds no port and takes no time.

- Serving on anything but loopback needs a login: `PEFT_STUDIO_AUTH=user:password` or
  `--auth-file FILE` (one `user:password` a line). Whenever a login is set, Gradio's
  `auth=` guards every page and API route, loopback included.
- What a browser may do is narrower than what the CLI may do: remote code only when the
  server was started with `--allow-remote-code`, datasets only by registered name or
  as files under data/, and models only the embedded one, a hub id or a folder under a
  `--models-dir` (the person at the browser may not be the person at the server).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.paths import ROOT, data_dir
from core.serve.hosts import is_loopback

AUTH_ENV = "PEFT_STUDIO_AUTH"


class AccessError(ValueError):
    """A server that must not start as asked, and what to do instead."""


@dataclass
class Policy:
    """What the running app allows its browsers; set once by `webui.app.launch`."""

    allow_remote_code: bool = False
    allow_multi_node: bool = False
    models_dirs: tuple[Path, ...] = ()  # --models-dir: folders whose models a page may use


POLICY = Policy()


def parse_logins(lines: Iterable[str], source: str) -> list[tuple[str, str]]:
    """`user:password` pairs, one a line (blank lines and # comments skipped); bad lines
    are named by number."""
    logins, bad = [], []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        user, sep, password = text.partition(":")
        if not sep or not user.strip() or not password:
            bad.append(number)
            continue
        logins.append((user.strip(), password))
    if bad:
        where = ", ".join(str(n) for n in bad)
        raise AccessError(f"{source}: line {where} is not user:password (a user name, a "
                          "colon, a password)")
    if not logins:
        raise AccessError(f"{source}: no user:password line")
    return logins


def read_auth_file(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise AccessError(f"--auth-file {path}: is a folder, not a file") from None
    except FileNotFoundError:
        raise AccessError(f"--auth-file {path}: no such file") from None
    except OSError as exc:
        raise AccessError(f"--auth-file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise AccessError(f"--auth-file {path}: not UTF-8 text") from None
    return parse_logins(text.splitlines(), f"--auth-file {path}")


def logins(auth_file: str | None = None,
           env: dict[str, str] | None = None) -> list[tuple[str, str]] | None:
    """The logins from --auth-file, else from PEFT_STUDIO_AUTH, else None."""
    if auth_file:
        return read_auth_file(auth_file)
    value = (os.environ if env is None else env).get(AUTH_ENV, "")
    if value.strip():
        return parse_logins([value], AUTH_ENV)
    return None


MIN_PASSWORD = 8


def check_serving(host: str, found: list[tuple[str, str]] | None) -> None:
    """Refuse to serve beyond this machine without a login, or with a guessable one."""
    if is_loopback(host):
        return
    if found is None:
        raise AccessError(
            f"refusing to serve on {host} without a login: anyone who can reach it could "
            f"train, read and delete runs; set {AUTH_ENV}=user:password or pass "
            "--auth-file FILE (or serve on 127.0.0.1)")
    short = [user for user, password in found if len(password) < MIN_PASSWORD]
    if short:
        raise AccessError(
            f"refusing to serve on {host}: the password of {', '.join(short)} is shorter "
            f"than {MIN_PASSWORD} characters, which anyone on the network could guess; "
            "choose a longer one")


# -- what a browser may ask for ----------------------------------------------------------
REMOTE_CODE_NOTE = ("Remote code is off for the browser: restart the server with "
                    "--allow-remote-code to offer it (or use `peft-studio train "
                    "--trust-remote-code`).")


def browser_dataset_problem(name: str) -> str | None:
    """Why a dataset typed in the browser is refused, or None: a registered name, or a
    file under data/. Other paths would let a browser read any file the server can."""
    from core.data.formats import DataError
    from core.data.registry import load_info

    try:
        if name in load_info():
            return None
    except DataError:  # a broken registry: the loader reports it with its line
        pass
    root = data_dir().resolve()
    path = Path(name).expanduser()
    full = (path if path.is_absolute() else root / path).resolve()
    if full == root or root in full.parents:
        return None
    return (f"{name!r} is outside {root}; the browser can use registered datasets or files "
            "under data/ (upload it in the Data tab), other paths only from the CLI "
            "(peft-studio train --dataset PATH)")


def browser_folder(folder: str) -> Path:
    """A folder a browser names for an import: only data/ or a folder inside it (put
    there by whoever runs the server); any other path would let a page read any file
    the server can. Raises ValueError saying so."""
    root = data_dir().resolve()
    path = Path(str(folder or "").strip() or root).expanduser()
    full = (path if path.is_absolute() else root / path).resolve()
    if full != root and root not in full.parents:
        raise ValueError(f"{str(folder)[:80]!r} is outside {root}; the browser imports only "
                         "folders under data/ (copy the folder there, or use `peft-studio "
                         "data import FOLDER` from a terminal)")
    if not full.is_dir():
        raise ValueError(f"no folder {full}")
    return full


# The shape of a hub id (org/name): what the hub itself accepts, and never a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def browser_model_problem(model: str | None) -> str | None:
    """Why a model typed in the browser is refused, or None: the embedded model, a hub id,
    or a folder (or .gguf) under a `--models-dir`. Decided from the name alone, before
    anything is looked at on disk, so that a refusal says nothing of what exists there."""
    from core.models import EMBEDDED

    name = str(model or "").strip()
    if not name or name == EMBEDDED:
        return None
    try:
        if _HUB_ID.fullmatch(name) and ".." not in name and not name.endswith(".gguf") \
                and not (ROOT / name).exists() and not Path(name).exists():
            return None
        path = Path(name).expanduser()
        full = (path if path.is_absolute() else ROOT / path).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, ~nosuchuser, too long
        full = None
    for folder in POLICY.models_dirs if full is not None else ():
        root = Path(folder).expanduser().resolve()
        if root in full.parents:
            return None
    shown = name[:80] + ("..." if len(name) > 80 else "")
    offered = ", ".join(str(d) for d in POLICY.models_dirs) or "none was given"
    return (f"{shown!r} is not a model the browser may use: it can use 'embedded', a hub "
            "id such as Qwen/Qwen2.5-0.5B-Instruct, or a folder under a models directory "
            f"of the server ({offered}). To offer a folder, restart the server with "
            "--models-dir DIR (or use `peft-studio train --model PATH`).")


def offered_models(limit: int = 200) -> list[str]:
    """The model folders (with a config.json) and .gguf files directly under each
    --models-dir, for the model box's suggestions."""
    found: list[str] = []
    for folder in POLICY.models_dirs:
        try:
            entries = sorted(Path(folder).expanduser().resolve().iterdir())
        except OSError:
            continue
        found += [str(p) for p in entries
                  if (p / "config.json").is_file() or (p.suffix == ".gguf" and p.is_file())]
    return found[:limit]


def check_browser_model(model: str | None) -> None:
    """Raise ValueError with `browser_model_problem`'s words when a page's model is refused."""
    why = browser_model_problem(model)
    if why:
        raise ValueError(f"model: {why}")


def existing_run(name: str) -> Path:
    """The folder of a run a tab shows, always one in saves/ (the CLI may name any path,
    the browser only runs here); if it was deleted meanwhile, say so plainly."""
    from core.jobs.runs import run_in_saves

    run = run_in_saves(name)
    if run is None:
        shown = str(name)[:80] + ("..." if len(str(name)) > 80 else "")
        raise ValueError(f"run {shown} no longer exists; refresh the list (a page can pick "
                         "only runs in saves/)")
    return run


def browser_problems(values: dict[str, Any]) -> list[str]:
    """What the browser may not ask for in a run's settings, as ConfigError lines."""
    problems = []
    why = browser_model_problem(values.get("model"))
    if why:
        problems.append(f"model: {why}")
    if values.get("trust_remote_code") and not POLICY.allow_remote_code:
        problems.append("trust_remote_code: " + REMOTE_CODE_NOTE)
    datasets = values.get("dataset") or []
    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    for name in datasets:
        why = browser_dataset_problem(str(name))
        if why:
            problems.append(f"dataset: {why}")
    problems += _run_problems(values)
    if not POLICY.allow_multi_node and (int(values.get("nnodes") or 1) > 1
                                        or int(values.get("node_rank") or 0) > 0
                                        or str(values.get("master_addr") or "").strip()):
        problems.append("nnodes: " + MULTI_NODE_NOTE)
    return problems


MULTI_NODE_NOTE = ("Several machines are off for the browser: the server would connect to "
                   "the address given. Restart it with --allow-multi-node to offer them (or "
                   "use `peft-studio train --nnodes N --master-addr HOST`).")


def _run_problems(values: dict[str, Any]) -> list[str]:
    """A start-from or reference run named by the browser must be a run in saves/."""
    from core.jobs.runs import run_in_saves

    problems = []
    for key in ("init_from_run", "ref_run"):
        name = str(values.get(key) or "").strip()
        if name and run_in_saves(name) is None:
            problems.append(f"{key}: {name[:80]!r} is not a run in saves/; the browser can "
                            "start from (or measure against) runs listed there only")
    return problems
