"""The safetensors format: a plain transformers folder (sharded safetensors, tokenizer with
its chat template, generation config, model card), or the adapter folder alone when the
plan is "adapter". Checked by loading it back the way a user would and comparing its
logits with the trained model's on a probe prompt."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

from core.export.common import (
    ExportFormat,
    compare_logits,
    parse_size,
    probe_logits,
    save_tokenizer,
)
from core.jobs.events import read_events
from core.methods.result import read_manifest


def _refusal(spec: Any, trained: Path, base: str, how: str, why: str) -> None:
    """Every plan can be written as safetensors."""


def _write(trained: Path, tmp: Path, how: str, spec: Any, name: str, step: Any,
           events: Any) -> dict[str, Any]:
    if how == "adapter":
        return write_adapter(trained, tmp, step)
    return write_model(trained, tmp, how, parse_size(spec.max_shard_size), step)


def _card(name: str, run_dir: Path, trained: Path, info: dict[str, Any], spec: Any) -> str:
    return model_card(name, run_dir, trained, info)


def _summary(end: dict[str, Any]) -> str:
    return (f"exported to {end['output_dir']} ({len(end['shards'])} safetensors file(s), "
            f"{end['bytes'] / 1e6:.1f} MB); logits max abs difference "
            f"{end['max_abs_diff']:.3g}")


def write_model(trained: Path, tmp: Path, how: str, shard_bytes: int,
                 step: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    from core.methods import implementation
    from core.methods.result import load_trained

    step("loading the trained model")
    model, tokenizer = load_trained(trained)
    model.eval()
    step("computing reference logits on a probe prompt")
    reference = probe_logits(model, tokenizer)
    device, dtype = model.device, next(model.parameters()).dtype
    if how == "merge":
        step("merging the adapter into the base weights")
        model = implementation(read_manifest(trained)["method"]).merge(model)
    else:
        step("whole model: nothing to merge")
    step(f"writing safetensors shards of at most {shard_bytes / 1e6:g} MB")
    model.save_pretrained(str(tmp), max_shard_size=shard_bytes)
    save_tokenizer(tokenizer, tmp)
    if not (tmp / "generation_config.json").is_file():
        GenerationConfig.from_model_config(model.config).save_pretrained(str(tmp))
    del model
    gc.collect()
    step("loading the export with plain transformers to check it")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=dtype).to(device).eval()
    diff, tolerance = compare_logits(reference, probe_logits(reloaded, tokenizer), dtype)
    return {"max_abs_diff": diff, "tolerance": tolerance, "dtype": str(dtype),
            "check": "AutoModelForCausalLM.from_pretrained(export) against the trained model"}


def write_adapter(trained: Path, tmp: Path, step: Any) -> dict[str, Any]:
    from core.methods.result import load_trained

    step("copying the adapter")
    shutil.copytree(trained, tmp)
    step("loading the trained model")
    model, tokenizer = load_trained(trained)
    step("computing reference logits on a probe prompt")
    reference = probe_logits(model.eval(), tokenizer)
    dtype = next(model.parameters()).dtype
    del model
    gc.collect()
    step("writing the tokenizer and chat template")
    save_tokenizer(tokenizer, tmp)
    step("loading the exported adapter on its base to check it")
    reloaded, _ = load_trained(tmp)
    diff, tolerance = compare_logits(reference, probe_logits(reloaded.eval(), tokenizer), dtype)
    return {"max_abs_diff": diff, "tolerance": tolerance, "dtype": str(dtype),
            "check": "the exported adapter loaded on its base against the trained model"}


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
                  "from core.methods.result import load_trained", "",
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


FORMAT = ExportFormat(
    name="safetensors", help="a transformers folder", refusal=_refusal, write=_write,
    card=_card, files=lambda tmp, result: sorted(p.name for p in tmp.glob("*.safetensors")),
    summary=_summary)
