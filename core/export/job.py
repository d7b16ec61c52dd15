"""Export a run as a model folder anyone can load: `python -m core.export JOB/export.yaml`.

Three plans, chosen from the method registry, never from a method's name:
  merge    LoRA family: the adapter is merged into the base weights (the method's merge,
           i.e. merge_and_unload) and a plain transformers model is written.
  full     full and freeze runs already are whole models: written again, in shards.
  adapter  asked for, or the method cannot merge (Method.not_mergeable_reason): the
           adapter folder alone, loadable on its base.
Each writes into saves/exports/<name>: sharded safetensors (save_pretrained with the chosen
max_shard_size), tokenizer with its chat template, generation config and a README.md
model card. With format "gguf", core/export/gguf.py writes one .gguf file (f16, bf16,
q8_0 or q4_0) with an Ollama Modelfile and a README instead, from the merge and full plans
only. Nothing counts as exported until the folder, loaded back the way a user would
load it, gives the same logits as the trained model on a probe prompt.

The job writes into a hidden temporary folder beside the target and renames it into place
at the end, so a failed or killed export never leaves half a model, nor destroys the
export it was asked to overwrite. Job files (export.yaml, events, log) live in
RUN/exports/<time>/, which is also the run's export history.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from core.export.common import ExportError, parse_size
from core.export.formats import FORMATS
from core.fsutil import disk_full, is_disk_full
from core.jobs.events import EventWriter
from core.jobs.job import describe_progress, follow, run_job
from core.jobs.runs import resolve_run, run_target
from core.methods.result import read_manifest
from core.paths import saves_dir
from core.schema.jobs import EXPORT
from core.schema.setting import add_flags

SPEC_FILE = "export.yaml"
# A plain folder name: no separators, no leading dot (so never "." or ".." or hidden).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
STEPS = 5


@dataclass
class ExportSpec:
    run_dir: str
    name: str
    checkpoint: str = "final"
    max_shard_size: str = EXPORT["max_shard_size"].default
    adapter_only: bool = False
    overwrite: bool = False
    format: str = "safetensors"
    gguf_type: str = EXPORT["gguf_type"].default
    # A folder anywhere, from the CLI only (`--out PATH`): the person at the terminal owns
    # the disk. Empty: saves/exports/<name>, the only place a page can export to.
    out: str = ""

    @classmethod
    def load(cls, path: Path) -> ExportSpec:
        return cls(**yaml.safe_load(path.read_text(encoding="utf-8")))


def exports_dir() -> Path:
    return saves_dir() / "exports"


def export_path(name: str) -> Path:
    """saves/exports/<name>; refuses anything that could land elsewhere."""
    name = (name or "").strip()
    if not NAME_RE.fullmatch(name):
        raise ExportError(
            f"export name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(not starting with '.'), no '/': every export is a folder in "
            f"{exports_dir()}")
    root = exports_dir().resolve()
    if (root / name).resolve().parent != root:  # e.g. an existing symlink pointing out
        raise ExportError(f"{root / name} leads outside {root}")
    return root / name


# What a folder --overwrite may replace holds one of these: an export, never a folder of
# anything else that an --out typed one level too high would name.
MODEL_FILES = ("config.json", "adapter_config.json", "*.gguf", "*.safetensors")


def output_folder(spec: ExportSpec) -> Path:
    """Where `spec` writes: its --out path, else saves/exports/<name>."""
    if spec.out:
        return Path(spec.out).expanduser().resolve()
    return export_path(spec.name)


def _check_cli_out(out: Path, spec: ExportSpec) -> None:
    """An --out path may be anywhere, but not a file, not a folder holding the run or
    saves/ (replacing it would delete them), and not a non-empty folder unless asked
    (--overwrite) and that folder is a model folder."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file; give a folder (new or empty)")
    for inside in (Path(spec.run_dir).resolve(), saves_dir().resolve()):
        if out == inside or out in inside.parents:
            raise ExportError(f"--out {out}: holds {inside}, which replacing it would "
                              "delete; choose a folder of its own")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not spec.overwrite:
        raise ExportError(f"--out {out}: exists and is not empty; pass --overwrite to "
                          "replace it, or choose a new or empty folder")
    if not any(any(out.glob(pattern)) for pattern in MODEL_FILES):
        raise ExportError(f"--out {out}: is not a model folder (no config.json, "
                          "adapter_config.json, .safetensors or .gguf), so --overwrite will "
                          "not replace it; choose a new or empty folder")


def plan(method: str, adapter_only: bool) -> tuple[str, str]:
    """(plan, why) for a run trained with `method`; see the module docstring."""
    from core.methods import METHODS

    if method not in METHODS:
        raise ExportError(f"method {method!r} of this run is not available in this version")
    spec = METHODS[method]
    if spec.saves_full_model:
        if adapter_only:
            raise ExportError(f"{spec.label} trains every weight it touches: the run is a "
                              "whole model and has no adapter to export alone")
        return "full", f"{spec.label} runs are whole models: written again in shards"
    if not spec.mergeable:
        return "adapter", (spec.not_mergeable_reason
                           or f"{spec.label} cannot be merged into the base weights")
    if adapter_only:
        return "adapter", "the adapter alone, as asked (load it on its base model)"
    return "merge", "the adapter is merged into the base weights: a plain transformers model"


def check(spec: ExportSpec) -> tuple[Path, str, str]:
    """(output folder, plan, why), or ExportError before anything is written."""
    out = output_folder(spec)
    if spec.out:
        _check_cli_out(out, spec)
    parse_size(spec.max_shard_size)
    try:
        target = run_target(Path(spec.run_dir), spec.checkpoint)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    manifest = read_manifest(Path(target.trained))
    how, why = plan(manifest["method"], spec.adapter_only)
    if spec.format not in FORMATS:
        raise ExportError(f"format {spec.format!r}: choose one of {', '.join(FORMATS)}")
    FORMATS[spec.format].refusal(spec, Path(target.trained), manifest.get("model", ""), how,
                                 why)
    if out.exists() and not spec.overwrite and not spec.out:
        raise ExportError(f"{out} already exists; choose another name, or tick overwrite "
                          "to replace it")
    return out, how, why


# -- starting and listing (UI and CLI side: no torch) ------------------------------------
def start(spec: ExportSpec) -> Path:
    """Check the request, start the export job, return its folder."""
    from core.jobs.job import start_job

    check(spec)
    return start_job(Path(spec.run_dir) / "exports", "core.export", asdict(spec), SPEC_FILE)


def job_state(job: Path) -> dict[str, Any]:
    """{"status", "done", "total", "message", "end": end event or {}, "spec"}."""
    from core.jobs.job import read_job

    state = read_job(job, SPEC_FILE)
    progress = state.progress
    return {"path": job, "status": state.status, "done": progress.get("done", 0),
            "total": progress.get("total", STEPS), "message": progress.get("message", ""),
            "end": state.end, "spec": state.spec}


def past_exports(run_dir: Path) -> list[dict[str, Any]]:
    jobs = [p for p in (Path(run_dir) / "exports").glob("*") if (p / SPEC_FILE).is_file()]
    return [job_state(p) for p in sorted(jobs, key=lambda p: p.name, reverse=True)]


# -- the job (subprocess side) -----------------------------------------------------------


def _swap_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder given as --out: the export takes its place
    if not out.exists():
        tmp.rename(out)
        return
    if not overwrite:
        raise ExportError(f"{out} appeared while exporting; the export is left in {tmp}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def export(spec: ExportSpec, events: EventWriter) -> dict[str, Any]:
    out, how, why = check(spec)
    run_dir = Path(spec.run_dir)
    trained = Path(run_target(run_dir, spec.checkpoint).trained)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        events.emit("progress", done=min(done, STEPS), total=STEPS, message=message)
        print(message, flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    try:
        fmt = FORMATS[spec.format]
        check_result = fmt.write(trained, tmp, how, spec, out.name, step, events)
        if not check_result["max_abs_diff"] <= check_result["tolerance"]:
            raise ExportError(
                f"the export does not reproduce the trained model: logits differ by up to "
                f"{check_result['max_abs_diff']:.3g} (allowed {check_result['tolerance']:.3g})"
                "; nothing was written")
        info = {"plan": how, "why": why, "run": run_dir.name, "checkpoint": spec.checkpoint,
                "trained_dir": str(trained), "max_shard_size": spec.max_shard_size,
                "shards": fmt.files(tmp, check_result), "format": spec.format, **check_result}
        card = fmt.card(out.name, run_dir, trained, info, spec)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _swap_into_place(tmp, out, spec.overwrite)
    except Exception as exc:
        if is_disk_full(exc):  # the partial folder goes first: the free space is then true
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_full(out, "and export again") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {**info, "output_dir": str(out), "bytes": size, "seconds": round(time.time() - t0, 1)}


def _job(spec: ExportSpec, job: Path, events: EventWriter) -> dict[str, Any]:
    result = export(spec, events)
    print(f"exported: {result['output_dir']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    return run_job(argv, "python -m core.export JOB_DIR/export.yaml", ExportSpec.load, _job,
                   device_for=lambda spec: f"export of {Path(spec.run_dir).name}")


# -- `peft-studio export` ----------------------------------------------------------------
def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="write a run as a standalone model folder (in saves/exports/, or "
        "wherever --out points)",
        description="Merge a LoRA-family adapter into its base (or reshard a full run, or "
        "copy an adapter that cannot merge) and write safetensors shards, tokenizer, chat "
        "template, generation config and a README. The export is checked against the "
        "trained model before it is reported done.")
    p.add_argument("run", help="run name (folder under saves/) or path")
    p.add_argument("--out", required=True,
                   help="a name (a folder in saves/exports/), or a folder path anywhere "
                   "(./x, /data/x); an existing non-empty folder needs --overwrite")
    p.add_argument("--checkpoint", default="final", help="'final' or step-N")
    p.add_argument("--adapter-only", action="store_true",
                   help="write the adapter alone instead of a merged model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--format", choices=list(FORMATS), default="safetensors",
                   help="; ".join(f"{f.name}: {f.help}" for f in FORMATS.values()))
    add_flags(p, EXPORT.values())
    p.set_defaults(func=_main)


def target_of_out(out: str) -> tuple[str, str]:
    """(name, out path) for `--out`: a bare name, or a path straight inside saves/exports,
    is an export there (no path); anything else with a separator (or ~) is a folder
    wherever it points."""
    path = Path(out).expanduser()
    if len(path.parts) == 1 and not path.is_absolute() and not out.startswith("~"):
        return out, ""
    full = path.resolve()
    if full.parent == exports_dir().resolve():
        return full.name, ""
    return full.name, str(full)


def _main(args: argparse.Namespace) -> int:
    try:
        run_dir = resolve_run(args.run)
        name, out = target_of_out(args.out)
        spec = ExportSpec(str(run_dir), name, args.checkpoint, args.max_shard_size,
                          args.adapter_only, args.overwrite, args.format, args.gguf_type, out)
        _, how, why = check(spec)
        print(f"export plan: {how} ({why})", flush=True)
        job = start(spec)
    except (ValueError, ExportError, OSError) as exc:  # OSError: a result without manifest
        print(f"error: {exc}", file=sys.stderr)
        return 2
    follow(job, describe_progress, abort_timeout=5)
    state = job_state(job)
    end = state["end"]
    if state["status"] != "done":
        print(f"failed: {end.get('error')}\n(log: {job / 'log.txt'})", file=sys.stderr)
        return 1
    print(FORMATS[end.get("format", "safetensors")].summary(end))
    return 0

