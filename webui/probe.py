"""Questions about a model that need torch or a tokenizer, answered in a short subprocess.

The UI process never imports torch or transformers: it would take seconds and hundreds of
megabytes at start-up, and a model loaded there would compete with training for memory.
`ask(command, payload)` runs `python -m webui.probe COMMAND` with the payload as JSON on
stdin and reads one JSON answer from stdout; answers are cached per payload, so asking
again about the same model and settings is instant.

Commands:
  inspect  payload: a run's settings. Builds the model on the "meta" device (no weights
           are read) with the method applied: trainable and total parameters, and the
           names of its linear layers (the choices for target modules), its shapes and
           each device's memory (for core.train.memory_estimate).
  preview  payload: model, dataset, cutoff_len, train_on_prompt, stage and the identity
           placeholders. Every sample's token length, and for the first PREVIEW_LIMIT
           samples the rendered text as (segment, trained) pieces; for pairwise and kto
           data the rendered prompt and each reply's pieces (see _preference_preview).
           Only what the cut-off can show is tokenized: the first cutoff_len *
           CHARS_PER_TOKEN characters of each sample ("partial" says which were cut).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from core.jobs.events import readable_error
from core.paths import ROOT, child_env

MARK = "@@probe@@ "  # libraries may print to stdout too; our answer is the marked line
PREVIEW_LIMIT = 500
# No tokenizer's tokens average anywhere near this many characters, so the first
# cutoff_len * CHARS_PER_TOKEN characters hold every token the cut-off keeps.
CHARS_PER_TOKEN = 32
TIMEOUT = 600
CACHE_SIZE = 32  # answers about previews hold every sample's text: keep only the recent

_cache: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


class ProbeError(RuntimeError):
    pass


def ask(command: str, payload: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """The probe's answer; raises ProbeError with the probe's own message on failure."""
    key = command + json.dumps(payload, sort_keys=True, default=str)
    with _lock:
        if key in _cache:
            return _cache[key]
    env = child_env()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "webui.probe", command],
            input=json.dumps(payload, default=str), capture_output=True, text=True,
            timeout=timeout, cwd=str(ROOT), env=env,
        )
    except subprocess.TimeoutExpired:
        raise ProbeError(f"the model check took longer than {timeout:g} s") from None
    answer = next((line[len(MARK):] for line in reversed(proc.stdout.splitlines())
                   if line.startswith(MARK)), None)
    if answer is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ProbeError("the model check crashed: " + " | ".join(tail))
    result = json.loads(answer)
    if "error" in result:
        raise ProbeError(result["error"])
    with _lock:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
    return result


# -- inside the subprocess ----------------------------------------------------------------
def inspect_model(settings: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from core import models
    from core.methods.base import apply_method
    from core.methods.common import count_parameters, target_candidates
    from core.schema.config import RunConfig

    cfg = RunConfig(**settings)
    # Counting needs shapes only: no quantization (it needs real weights and a GPU; it
    # changes no count) and no data-dependent initialisation such as PiSSA's SVD.
    changes: dict[str, Any] = {}
    if "quantization" in cfg.to_dict():
        changes["quantization"] = "none"
    if "lora_init" in cfg.to_dict():
        changes["lora_init"] = "default"
    cfg = cfg.replace(**changes) if changes else cfg
    location = models.local_folder(cfg.model)
    config = AutoConfig.from_pretrained(location, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    targets = target_candidates(model)
    model = apply_method(model, cfg)
    trainable, total = count_parameters(model)
    text = getattr(config, "text_config", None) or config
    return {"trainable": trainable, "total": total, "targets": targets,
            "model_type": getattr(config, "model_type", ""),
            # for the memory estimate (core.train.memory_estimate)
            "hidden_size": getattr(text, "hidden_size", 0),
            "num_layers": getattr(text, "num_hidden_layers", 0),
            "num_heads": getattr(text, "num_attention_heads", 1),
            "vocab_size": getattr(text, "vocab_size", 0),
            **machine()}


def machine() -> dict[str, Any]:
    """Each device's memory: every visible GPU, or this machine's RAM."""
    import psutil
    import torch

    if torch.cuda.is_available():
        devices = [{"name": f"cuda:{i} ({torch.cuda.get_device_name(i)})", "kind": "gpu",
                    "memory": torch.cuda.get_device_properties(i).total_memory}
                   for i in range(torch.cuda.device_count())]
        return {"devices": devices, "bf16": torch.cuda.is_bf16_supported()}
    return {"devices": [{"name": "CPU (RAM)", "kind": "cpu",
                         "memory": psutil.virtual_memory().total}], "bf16": False}


def preview_data(payload: dict[str, Any]) -> dict[str, Any]:
    from types import SimpleNamespace

    from core import models
    from core.data.encode import bounded_lengths, chat_template, preview
    from core.data.loader import load_examples
    from core.data.registry import resolve
    from core.data.system import describe, rendering

    tokenizer = models.load_tokenizer(payload["model"], payload.get("trust_remote_code", False))
    opts = SimpleNamespace(max_samples=0, identity_name=payload.get("identity_name", ""),
                           identity_author=payload.get("identity_author", ""))
    examples = load_examples([payload["dataset"]], opts)
    drawn = resolve(payload["dataset"]).num_samples
    cutoff = int(payload["cutoff_len"])
    bound = cutoff * CHARS_PER_TOKEN
    if examples and "prompt" in examples[0]:
        return _preference_preview(tokenizer, examples, cutoff)
    chats = [ex["messages"] for ex in examples if "messages" in ex]
    tokenizer = rendering(tokenizer, payload.get("system_prompt") or "default")
    system = describe(tokenizer, chat_template(tokenizer), chats) if chats else ""
    lengths, partial = bounded_lengths(examples, tokenizer, bound)
    samples = []
    for ex in examples[:PREVIEW_LIMIT]:
        if "messages" in ex:
            samples.append(preview(tokenizer, ex["messages"], cutoff,
                                   bool(payload.get("train_on_prompt")), bound,
                                   ex.get("tools")))
        else:
            samples.append(_text_preview(tokenizer, ex["text"][:bound], cutoff))
    return {"lengths": lengths, "samples": samples, "count": len(examples),
            "partial": partial, "measured_chars": bound, "system": system,
            "num_samples": drawn,
            "kind": "messages" if examples and "messages" in examples[0] else "text"}


def _preference_preview(tokenizer: Any, examples: list[dict], cutoff: int) -> dict[str, Any]:
    """Pairs (or KTO's labelled replies): the prompt rendered once, each reply with its
    trained tokens, as the SFT preview marks them; lengths count prompt and reply."""
    from core.data.encode import bounded_lengths, preview, prompt_text

    kto = "completion" in examples[0]
    replies = ("completion",) if kto else ("chosen", "rejected")
    bound = cutoff * CHARS_PER_TOKEN
    measured = {r: bounded_lengths([{"messages": ex["prompt"] + ex[r]} for ex in examples],
                                   tokenizer, bound) for r in replies}
    lengths = {r: m[0] for r, m in measured.items()}
    samples = []
    for ex in examples[:PREVIEW_LIMIT]:
        prompt = prompt_text(tokenizer, ex["prompt"])
        sample: dict[str, Any] = {"prompt": prompt[:bound]}
        for r in replies:
            # Prompt tokens are never trained in these stages (TRL masks them).
            segments = preview(tokenizer, ex["prompt"] + ex[r], cutoff, False, bound)
            sample[r] = _after(segments, len(prompt))
        if kto:
            sample["label"] = ex["label"]
        samples.append(sample)
    first = lengths[replies[0]]
    return {"lengths": first, "samples": samples, "count": len(examples),
            "partial": measured[replies[0]][1], "measured_chars": bound,
            "kind": "kto" if kto else "pairwise",
            **({} if kto else {"rejected_lengths": lengths["rejected"]})}


def _after(segments: list[tuple[str, bool]], skip: int) -> list[tuple[str, bool]]:
    """The segments past the first `skip` characters (the rendered prompt)."""
    out = []
    for text, trained in segments:
        if skip >= len(text):
            skip -= len(text)
            continue
        out.append((text[skip:], trained))
        skip = 0
    return out


def _text_preview(tokenizer: Any, text: str, cutoff: int) -> list[tuple[str, bool]]:
    """Raw text is trained on entirely; show where cutoff_len cuts it."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    end = offsets[min(cutoff, len(offsets)) - 1][1] if offsets else len(text)
    return [(text[:end], True)]


COMMANDS = {"inspect": inspect_model, "preview": preview_data}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: python -m webui.probe {{{','.join(COMMANDS)}}} < payload.json",
              file=sys.stderr)
        return 2
    payload = json.loads(sys.stdin.read() or "{}")
    try:
        result = COMMANDS[argv[0]](payload)
    except Exception as exc:  # the UI shows the message; the details go to stderr
        import traceback

        traceback.print_exc()
        result = {"error": readable_error(exc)}
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
