"""Model sources: embedded GGUF (cached as safetensors), local folder, .gguf file, hub id."""

from __future__ import annotations

import time

import pytest

from core import models
from core.models import ModelSourceError


def test_embedded_is_cached_as_safetensors(embedded_dir):
    assert (embedded_dir / "config.json").is_file()
    assert list(embedded_dir.glob("*.safetensors"))
    assert (embedded_dir / "tokenizer_config.json").is_file()
    t = time.time()
    model = models.load_model("embedded")
    assert time.time() - t < 30  # cached: no GGUF conversion again
    assert model.config.model_type == "llama"
    assert getattr(model, "hf_quantizer", None) is None


def test_embedded_tokenizer_has_chat_template(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_local_gguf_file_resolves_to_the_same_cache(embedded_dir):
    source = models.resolve(str(models.embedded_gguf()))
    assert source.kind == "gguf"
    assert source.location == str(embedded_dir)


def test_local_folder(tiny_model_dir):
    source = models.resolve(str(tiny_model_dir))
    assert source.kind == "local"
    model = models.load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2


def test_hub_id_offline_fails_fast_with_advice():
    t = time.time()
    with pytest.raises(ModelSourceError) as info:
        models.load_model("some-org/not-a-cached-model")
    assert time.time() - t < 10
    message = str(info.value)
    assert "'some-org/not-a-cached-model'" in message
    assert "local model folder" in message


def test_bad_local_paths(tmp_path):
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        models.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(ModelSourceError, match="Model path not found"):
        models.resolve(str(tmp_path / "nope" / "deeper"))
