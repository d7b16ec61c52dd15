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
import gc
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from core.jobs.events import EventWriter, read_events
from core.jobs.job import describe_progress, follow, run_job
from core.jobs.runs import resolve_run, run_target
from core.methods.common import read_manifest
from core.paths import saves_dir

SPEC_FILE = "export.yaml"
# A plain folder name: no separators, no leading dot (so never "." or ".." or hidden).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)\s*", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
PROBE = "Write one sentence about the sea."
STEPS = 5
FORMATS = ("safetensors", "gguf")


class ExportError(ValueError):
    """An export that must not start (or could not finish), and what to do about it."""


@dataclass
class ExportSpec:
    run_dir: str
    name: str
    checkpoint: str = "final"
    max_shard_size: str = "2GB"
    adapter_only: bool = False
    overwrite: bool = False
    format: str = "safetensors"
    gguf_type: str = "q8_0"

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


def parse_size(text: str) -> int:
    """Bytes in '200MB', '2GB', '500KB' (decimal units, as Hugging Face uses them)."""
    m = _SIZE_RE.fullmatch(str(text))
    if not m:
        raise ExportError(f"max shard size {text!r}: write a number and a unit, e.g. 200MB "
                          "or 2GB")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < 1000:
        raise ExportError(f"max shard size {text!r} is too small (at least 1KB)")
    return size


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
    out = export_path(spec.name)
    parse_size(spec.max_shard_size)
    try:
        target = run_target(Path(spec.run_dir), spec.checkpoint)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    manifest = read_manifest(Path(target.trained))
    how, why = plan(manifest["method"], spec.adapter_only)
    if spec.format not in FORMATS:
        raise ExportError(f"format {spec.format!r}: choose one of {', '.join(FORMATS)}")
    if spec.format == "gguf":
        _check_gguf(spec, Path(target.trained), manifest.get("model", ""), how, why)
    if out.exists() and not spec.overwrite:
        raise ExportError(f"{out} already exists; choose another name, or tick overwrite "
                          "to replace it")
    return out, how, why


def _check_gguf(spec: ExportSpec, trained: Path, base: str, how: str, why: str) -> None:
    from core.export import gguf as gg

    if spec.gguf_type not in gg.TYPES:
        raise ExportError(f"GGUF type {spec.gguf_type!r}: choose one of "
                          f"{', '.join(gg.TYPES)}. {gg.OTHER_TYPES}")
    if how == "adapter":
        raise ExportError(f"GGUF holds a whole model, and this export would be an adapter "
                          f"alone ({why}); export safetensors instead")
    try:
        config = gg.config_of(trained, base)
    except Exception:  # an unresolvable base is the job's to report, with its reason
        config = None
    if config and (reason := gg.refusal(config)):
        raise ExportError(reason)


# -- starting and listing (UI and CLI side: no torch) ------------------------------------
def start(spec: ExportSpec) -> Path:
    """Check the request, start the export job, return its folder."""
    from core.jobs.runner import start_job

    check(spec)
    return start_job(Path(spec.run_dir) / "exports", "core.export", asdict(spec), SPEC_FILE)


def job_state(job: Path) -> dict[str, Any]:
    """{"status", "done", "total", "message", "end": end event or {}, "spec"}."""
    from core.jobs.runner import read_job

    state = read_job(job, SPEC_FILE)
    progress = state.progress
    return {"path": job, "status": state.status, "done": progress.get("done", 0),
            "total": progress.get("total", STEPS), "message": progress.get("message", ""),
            "end": state.end, "spec": state.spec}


def past_exports(run_dir: Path) -> list[dict[str, Any]]:
    jobs = [p for p in (Path(run_dir) / "exports").glob("*") if (p / SPEC_FILE).is_file()]
    return [job_state(p) for p in sorted(jobs, key=lambda p: p.name, reverse=True)]


# -- the job (subprocess side) -----------------------------------------------------------
def _probe_logits(model: Any, tokenizer: Any) -> Any:
    import torch

    from core.data.encode import chat_template

    text = tokenizer.apply_chat_template([{"role": "user", "content": PROBE}], tokenize=False,
                                         add_generation_prompt=True,
                                         chat_template=chat_template(tokenizer))
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        return model(**ids).logits.float().cpu()


def _compare(reference: Any, exported: Any, dtype: Any) -> tuple[float, float]:
    """(max abs difference, tolerance). Merging reorders float sums, so the logits of a
    merged model differ by rounding: about 1e-5 relative in fp32, 1e-2 in 16 bits."""
    import torch

    diff = float((reference - exported).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    tolerance = (1e-4 if dtype == torch.float32 else 2e-2) * scale
    return diff, tolerance


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    from core.data.encode import chat_template

    # A model trained without a template of its own was trained on our fallback one;
    # saving it makes the export render prompts exactly as training did.
    tokenizer.chat_template = chat_template(tokenizer)
    tokenizer.save_pretrained(str(folder))


def _write_model(trained: Path, tmp: Path, how: str, shard_bytes: int,
                 step: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    from core.methods import implementation
    from core.methods.common import load_trained

    step("loading the trained model")
    model, tokenizer = load_trained(trained)
    model.eval()
    step("computing reference logits on a probe prompt")
    reference = _probe_logits(model, tokenizer)
    device, dtype = model.device, next(model.parameters()).dtype
    if how == "merge":
        step("merging the adapter into the base weights")
        model = implementation(read_manifest(trained)["method"]).merge(model)
    else:
        step("whole model: nothing to merge")
    step(f"writing safetensors shards of at most {shard_bytes / 1e6:g} MB")
    model.save_pretrained(str(tmp), max_shard_size=shard_bytes)
    _save_tokenizer(tokenizer, tmp)
    if not (tmp / "generation_config.json").is_file():
        GenerationConfig.from_model_config(model.config).save_pretrained(str(tmp))
    del model
    gc.collect()
    step("loading the export with plain transformers to check it")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=dtype).to(device).eval()
    diff, tolerance = _compare(reference, _probe_logits(reloaded, tokenizer), dtype)
    return {"max_abs_diff": diff, "tolerance": tolerance, "dtype": str(dtype),
            "check": "AutoModelForCausalLM.from_pretrained(export) against the trained model"}


def _write_adapter(trained: Path, tmp: Path, step: Any) -> dict[str, Any]:
    from core.methods.common import load_trained

    step("copying the adapter")
    shutil.copytree(trained, tmp)
    step("loading the trained model")
    model, tokenizer = load_trained(trained)
    step("computing reference logits on a probe prompt")
    reference = _probe_logits(model.eval(), tokenizer)
    dtype = next(model.parameters()).dtype
    del model
    gc.collect()
    step("writing the tokenizer and chat template")
    _save_tokenizer(tokenizer, tmp)
    step("loading the exported adapter on its base to check it")
    reloaded, _ = load_trained(tmp)
    diff, tolerance = _compare(reference, _probe_logits(reloaded.eval(), tokenizer), dtype)
    return {"max_abs_diff": diff, "tolerance": tolerance, "dtype": str(dtype),
            "check": "the exported adapter loaded on its base against the trained model"}


def _write_gguf(trained: Path, tmp: Path, how: str, name: str, gguf_type: str,
                events: EventWriter) -> dict[str, Any]:
    from core.export.gguf import export_gguf

    def progress(done: int, total: int, message: str) -> None:
        events.emit("progress", done=done, total=total, message=message)
        print(message, flush=True)

    return export_gguf(trained, tmp, how, name, gguf_type, progress)


def _swap_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
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


def model_card(name: str, run_dir: Path, trained: Path, info: dict[str, Any]) -> str:
    """README.md: what the model is, how it was trained and scored, and how to load it."""
    from core import models
    from core.evaluate.job import past_evaluations
    from core.methods import METHODS

    manifest = read_manifest(trained)
    base, method = manifest.get("model", ""), manifest.get("method", "")
    label = METHODS[method].label if method in METHODS else method
    try:
        source = models.resolve(base)
        hub_id = {"hub": base, "embedded": "HuggingFaceTB/SmolLM2-135M-Instruct"}.get(
            source.kind)
    except Exception:
        hub_id = None
    adapter = info["plan"] == "adapter"
    lines = ["---", f"library_name: {'peft' if adapter else 'transformers'}",
             f"tags: [peft-studio, {method}]"]
    if hub_id:
        lines.append(f"base_model: {hub_id}")
    lines += ["---", "", f"# {name}", "",
              f"Fine-tuned from `{hub_id or base}` with {label} in PEFT Studio "
              f"(run `{run_dir.name}`, {info['checkpoint']} result).", "",
              f"Export: {info['why']}.", ""]
    lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
    from core.schema.config import SETTINGS

    settings = manifest.get("settings") or {}
    # What this run chose; the defaults would bury it.
    lines += [f"| {k} | `{v}` |" for k, v in settings.items()
              if k in ("model", "method", "dataset") or k not in SETTINGS
              or v != SETTINGS[k].default]
    events, _ = read_events(run_dir)
    end = next((e for e in reversed(events) if e["type"] == "end"), {})
    lines += ["", "## Results", ""]
    if end.get("final_loss") is not None:
        lines.append(f"- final training loss: {end['final_loss']:.4f} after "
                     f"{end.get('steps', '?')} steps")
    if end.get("final_eval_loss") is not None:
        lines.append(f"- final validation loss: {end['final_eval_loss']:.4f}")
    evaluated = next((j.results for j in past_evaluations(run_dir) if j.results), None)
    if evaluated and evaluated.get("kind") == "preference":
        lines += ["", f"Preference evaluation on {', '.join(evaluated['dataset'])} "
                  f"({evaluated['samples']} pairs; a reply's score is its log-likelihood):",
                  "", "| model | accuracy (chosen ranked higher) | mean margin |",
                  "|---|---|---|"]
        for key, m in evaluated["models"].items():
            lines.append(f"| {key.replace('_', '-')} | {100 * m['accuracy']:.1f}% "
                         f"| {m['mean_margin']:.3f} |")
    elif evaluated:
        lines += ["", f"Evaluation on {', '.join(evaluated['dataset'])} "
                  f"({evaluated['samples']} samples, greedy answers):", "",
                  "| model | loss | perplexity | exact match | BLEU-4 | ROUGE-L |",
                  "|---|---|---|---|---|---|"]
        for key, m in evaluated["models"].items():
            lines.append(f"| {key.replace('_', '-')} | {m['loss']:.4f} | {m['perplexity']:.3f}"
                         f" | {m['exact_match']:.1f} | {m['bleu']:.1f} | {m['rouge_l']:.1f} |")
    lines += ["", f"Export check: {info['check']}; largest logit difference on a probe "
              f"prompt {info['max_abs_diff']:.3g} ({info['dtype']}).", "", "## Use", "",
              "```python"]
    if adapter and not (trained / "adapter_config.json").is_file():
        lines += ["# an adapter of PEFT Studio's own (not a peft one): load it with the studio",
                  "from core.methods.common import load_trained", "",
                  f"model, tokenizer = load_trained({name!r})  # this folder"]
    elif adapter:
        lines += ["from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"base = AutoModelForCausalLM.from_pretrained({(hub_id or base)!r})",
                  f"model = PeftModel.from_pretrained(base, {name!r})  # this folder",
                  f"tokenizer = AutoTokenizer.from_pretrained({name!r})"]
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"model = AutoModelForCausalLM.from_pretrained({name!r})  # this folder",
                  f"tokenizer = AutoTokenizer.from_pretrained({name!r})"]
    lines += ["", "messages = [{'role': 'user', 'content': 'Hello!'}]",
              "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
              "return_tensors='pt', return_dict=True)",
              "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
              "```", ""]
    return "\n".join(lines)


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
        if spec.format == "gguf":
            check_result = _write_gguf(trained, tmp, how, out.name, spec.gguf_type, events)
        elif how == "adapter":
            check_result = _write_adapter(trained, tmp, step)
        else:
            check_result = _write_model(trained, tmp, how, parse_size(spec.max_shard_size), step)
        if not check_result["max_abs_diff"] <= check_result["tolerance"]:
            raise ExportError(
                f"the export does not reproduce the trained model: logits differ by up to "
                f"{check_result['max_abs_diff']:.3g} (allowed {check_result['tolerance']:.3g})"
                "; nothing was written")
        shards = sorted(p.name for p in tmp.glob("*.safetensors"))
        info = {"plan": how, "why": why, "run": run_dir.name, "checkpoint": spec.checkpoint,
                "trained_dir": str(trained), "max_shard_size": spec.max_shard_size,
                "shards": shards, "format": spec.format, **check_result}
        if spec.format == "gguf":
            from core.export.gguf import readme

            info["shards"] = [check_result["gguf_file"]]
            card = readme(out.name, check_result["gguf_file"], spec.gguf_type, info)
        else:
            card = model_card(out.name, run_dir, trained, info)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _swap_into_place(tmp, out, spec.overwrite)
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
        "export", help="write a run as a standalone model folder under saves/exports/",
        description="Merge a LoRA-family adapter into its base (or reshard a full run, or "
        "copy an adapter that cannot merge) and write safetensors shards, tokenizer, chat "
        "template, generation config and a README. The export is checked against the "
        "trained model before it is reported done.")
    p.add_argument("run", help="run name (folder under saves/) or path")
    p.add_argument("--out", required=True,
                   help="export name, or saves/exports/<name>; it must stay in that folder")
    p.add_argument("--checkpoint", default="final", help="'final' or step-N")
    p.add_argument("--max-shard-size", default="2GB", help="e.g. 200MB, 2GB (default 2GB)")
    p.add_argument("--adapter-only", action="store_true",
                   help="write the adapter alone instead of a merged model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--format", choices=FORMATS, default="safetensors",
                   help="safetensors (a transformers folder) or gguf (one file for llama.cpp, "
                   "Ollama and LM Studio, with a Modelfile)")
    from core.export.gguf import OTHER_TYPES, TYPES

    p.add_argument("--gguf-type", default="q8_0", choices=TYPES,
                   help=f"GGUF tensor type (default q8_0). {OTHER_TYPES}")
    p.set_defaults(func=_main)


def name_from_out(out: str) -> str:
    """The export name in --out: a bare name, or a path whose folder is saves/exports."""
    path = Path(out).expanduser()
    if len(path.parts) == 1 and not path.is_absolute():
        return out
    if path.parent.resolve() != exports_dir().resolve():
        raise ExportError(f"--out {out!r}: exports are written in {exports_dir()}; give a "
                          "name, or a path directly inside that folder")
    return path.name


def _main(args: argparse.Namespace) -> int:
    try:
        run_dir = resolve_run(args.run)
        spec = ExportSpec(str(run_dir), name_from_out(args.out), args.checkpoint,
                          args.max_shard_size, args.adapter_only, args.overwrite,
                          args.format, args.gguf_type)
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
    if end.get("format") == "gguf":
        fig = end["figures"]
        print(f"exported to {end['output_dir']} ({end['gguf_file']}, {end['bytes'] / 1e6:.1f} "
              f"MB); read back: logit difference {fig['max_rel_logit_diff']:.3g} of the range, "
              f"top-1 agreement {fig['top1_agreement']:.1%}, identical greedy answers "
              f"{fig['greedy_agreement']:.0%} of {fig['greedy_prompts']}")
        return 0
    print(f"exported to {end['output_dir']} ({len(end['shards'])} safetensors file(s), "
          f"{end['bytes'] / 1e6:.1f} MB); logits max abs difference "
          f"{end['max_abs_diff']:.3g}")
    return 0

