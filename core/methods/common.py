"""What every method shares: loading the base for training (QLoRA included), applying a
method, counting parameters, and saving/loading a trained result as a self-describing
folder.

A trained folder holds the method's own files (a peft adapter, our bottleneck adapter, or a
whole model), the tokenizer, and `studio.json`:

    {"method": "lora", "model": "embedded", "settings": {...every setting of the run...}}

so Chat, Evaluate and Export can open it knowing only its path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.schema.setting import Setting

MANIFEST = "studio.json"

# Shared by the prompt-learning methods (prefix, prompt, ptuning): one setting, one widget.
NUM_VIRTUAL_TOKENS = Setting(
    "num_virtual_tokens", 16, "How many trainable virtual tokens are put before every "
    "input. More learns more; prompt and P-tuning tokens also take room in the context.",
    "method", label="Virtual tokens", label_zh="虚拟词元数", minimum=1, maximum=512,
    help_zh="放在每个输入前的可训练虚拟 token 数。越多学得越多；提示微调和 P-tuning 的 token "
            "也会占用上下文长度。",
)


# -- parameters --------------------------------------------------------------------------
def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters. Tied weights count once; a bitsandbytes 4-bit
    weight counts as the number of weights it stores, not its packed bytes."""
    if hasattr(model, "get_nb_trainable_parameters"):  # a peft model: its own counts
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2 * (p.quant_storage.itemsize if hasattr(p, "quant_storage") else 1)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def target_candidates(model: Any) -> list[str]:
    """Distinct leaf names of the model's linear layers (q_proj, v_proj, ...), in model
    order, without lm_head: the choices for a target-module picker. A layer already
    wrapped by a method (peft's or ours, both keep it as `base_layer`) is listed under
    its own name; the method's inner layers are not listed."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers; peft takes them

    wrappers = [name for name, m in model.named_modules()
                if name and isinstance(getattr(m, "base_layer", None), nn.Module)]
    names: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | Conv1D):
            continue
        inside = next((w for w in wrappers if name.startswith(w + ".")), None)
        if inside is not None:
            if name != inside + ".base_layer":
                continue  # lora_A, an adapter's down/up, ...
            name = inside
        leaf = name.rsplit(".", 1)[-1]
        if leaf != "lm_head" and leaf not in names:
            names.append(leaf)
    return names


# -- loading the base for training -----------------------------------------------------------
def training_dtype(cfg: Any) -> Any:
    """The dtype the base weights are loaded in (core.precision.base_dtype): bfloat16 when
    the run computes in bf16 (on a CPU only for methods whose base stays frozen), else
    float32. fp16 runs keep float32 weights: mixed precision computes in fp16 but needs
    float32 weights to update."""
    import torch

    from core import precision

    on_gpu = torch.cuda.is_available()
    return precision.base_dtype(cfg, precision.for_run(cfg).precision, on_gpu)


def quantization_config(cfg: Any) -> Any:
    """The BitsAndBytesConfig for the run's quantization, or None when it has none."""
    if getattr(cfg, "quantization", "none") == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if cfg.compute_dtype == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        compute = torch.bfloat16 if gpu_bf16 else torch.float32
    else:
        compute = getattr(torch, cfg.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def load_base_for_training(cfg: Any) -> Any:
    """The base model as the run trains it, in `training_dtype`; with quantization, loaded
    in 8 or 4 bits by bitsandbytes (this works on CPU too, slowly) and prepared for k-bit
    training (frozen, norms in float32, and gradient checkpointing when the run asks for it)."""
    import torch

    from core import models

    quant = quantization_config(cfg)
    device_map = None
    if quant is not None and torch.cuda.is_available():
        # bitsandbytes places the weights as it quantizes them: one GPU per process
        # (LOCAL_RANK under torchrun).
        device_map = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = models.load_model(
        cfg.model,
        dtype=training_dtype(cfg),
        quantization_config=quant,
        trust_remote_code=cfg.trust_remote_code,
        device_map=device_map,
    )
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
    return model


def apply_method(model: Any, cfg: Any) -> Any:
    """Wrap `model` with the run's method so that only the method's parameters train.
    Trainable half-precision weights are kept in float32 (mixed precision wants float32
    weights to update; the frozen rest stays in the loading dtype)."""
    import torch

    from core.methods import implementation

    model = implementation(cfg.method).wrap(model, cfg)
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
    return model


# -- saving and loading a trained result ---------------------------------------------------
def save_trained(model: Any, out_dir: str | Path, cfg: Any, tokenizer: Any = None,
                 state_dict: dict[str, Any] | None = None) -> Path:
    """Write the method's weights, the tokenizer and studio.json into `out_dir`. A sharded
    run (ZeRO-3, FSDP) passes the weights its processes gathered as `state_dict`."""
    from core.methods import implementation

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    implementation(cfg.method).save(model, out, cfg, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    manifest = {"method": cfg.method, "model": cfg.model, "settings": cfg.to_dict()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")
    return out


def save_result(model: Any, out_dir: str | Path, cfg: Any, tokenizer: Any = None,
                state_dict: dict[str, Any] | None = None) -> Path:
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
        save_trained(model, tmp, cfg, tokenizer, state_dict)
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
                base_model = _load_quantized(cfg)
            else:
                base_model = models.load_model(cfg.model,
                                               trust_remote_code=cfg.trust_remote_code)
        model = impl.load(base_model, out, cfg)
    return model, _load_tokenizer(out, cfg)


def _load_quantized(cfg: Any) -> Any:
    import torch

    from core import models

    return models.load_model(
        cfg.model, dtype=training_dtype(cfg), quantization_config=quantization_config(cfg),
        trust_remote_code=cfg.trust_remote_code,
        device_map={"": 0} if torch.cuda.is_available() else None,
    )


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
