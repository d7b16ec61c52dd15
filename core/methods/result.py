"""A trained result as a self-describing folder: the method's own files (a peft adapter,
our bottleneck adapter, or a whole model), the tokenizer, and `studio.json`:

    {"method": "lora", "model": "embedded", "settings": {...every setting of the run...}}

so Chat, Evaluate and Export can open it knowing only its path. Written whole-or-nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "studio.json"


def save_trained(model: Any, out_dir: str | Path, cfg: Any, tokenizer: Any = None,
                 state_dict: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the method's weights, the tokenizer and studio.json (with `extra`'s fields)
    into `out_dir`. A sharded run (ZeRO-3, FSDP) passes the weights its processes gathered
    as `state_dict`."""
    from core.methods import implementation

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    implementation(cfg.method).save(model, out, cfg, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    manifest = {"method": cfg.method, "model": cfg.model, "settings": cfg.to_dict(),
                **(extra or {})}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")
    return out


def save_result(model: Any, out_dir: str | Path, cfg: Any, tokenizer: Any = None,
                state_dict: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> Path:
    """`save_trained` made whole-or-nothing: written into a hidden sibling folder and
    renamed into place, so a kill, a crash or a full disk never leaves a half-written
    folder that pickers would offer as a result. On a full disk the partial folder is
    removed (which also frees the room to report it) and an OSError says so."""
    import shutil

    from core.fsutil import disk_full, is_disk_full

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_trained(model, tmp, cfg, tokenizer, state_dict, extra)
        if out.exists():  # a rerun of the same step: replace, never merge
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise disk_full(out) from exc
        raise
    return out


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{out_dir} is not a trained result of PEFT Studio: it has no {MANIFEST}"
        ) from None


def chat_settings(out_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """(system prompt choice, chat template switches) a result's replies were trained
    under, as Chat, serving and Evaluate must render them: its `system_prompt` setting
    (core.data.system) and e.g. Qwen3's `enable_thinking` (core.data.encode.
    chat_template_kwargs). Results saved before either was recorded rendered the
    template's defaults: ("default", {})."""
    try:
        manifest = read_manifest(out_dir)
    except (FileNotFoundError, ValueError):
        return "default", {}
    return (manifest.get("settings", {}).get("system_prompt", "default"),
            dict(manifest.get("chat_template_kwargs") or {}))


def generate_extras(model: Any) -> dict[str, Any]:
    """Extra `generate()` arguments a loaded model needs. A prefix-tuned peft model
    generates without a KV cache: with transformers 5.24 and peft 0.21, generate() makes
    its cache before peft can put the prefix's keys and values in it, so the prefix was
    silently ignored (the forward pass used it, generation answered like the base:
    tests/test_methods_embedded.py). Without a cache peft prepends the prefix at every
    step: slower, since each step reruns the whole sequence, but the tuned model answers."""
    config = getattr(model, "peft_config", None)
    if not config:
        return {}
    active = config.get(getattr(model, "active_adapter", "default"))
    kind = getattr(getattr(active, "peft_type", None), "value", None)
    return {"use_cache": False} if kind == "PREFIX_TUNING" else {}


def load_trained(out_dir: str | Path, base_model: Any = None, *,
                 quantized: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) from a folder written by `save_trained`.

    The base is `base_model` when given, else the run's model loaded afresh: in full
    precision by default (what export and merging need), or, with `quantized=True`,
    quantized as it was in training (a QLoRA adapter then gives exactly its training-time
    outputs). A method that saves a whole model (full, freeze) is loaded from the folder
    alone, without loading the base first."""
    from core import models
    from core.methods import METHODS, implementation
    from core.methods.base import load_quantized
    from core.schema.config import RunConfig

    out = Path(out_dir)
    manifest = read_manifest(out)
    cfg = RunConfig(**manifest["settings"])
    impl = implementation(cfg.method)
    if METHODS[cfg.method].saves_full_model and base_model is None:
        model = models.load_model(str(out), trust_remote_code=cfg.trust_remote_code)
    else:
        if base_model is None:
            if quantized and cfg.quantization != "none":
                base_model = load_quantized(cfg)
            else:
                base_model = models.load_model(cfg.model,
                                               trust_remote_code=cfg.trust_remote_code)
        model = impl.load(base_model, out, cfg)
    return model, _load_tokenizer(out, cfg)


def trained_tokenizer(out_dir: str | Path) -> Any:
    """The tokenizer (and chat template) a result was saved with, without its weights."""
    from core.schema.config import RunConfig

    return _load_tokenizer(Path(out_dir), RunConfig(**read_manifest(out_dir)["settings"]))


def _load_tokenizer(out: Path, cfg: Any) -> Any:
    from transformers import AutoTokenizer

    from core import models

    if not (out / "tokenizer_config.json").is_file():
        return models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(out), trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
