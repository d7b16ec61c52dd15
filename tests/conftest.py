"""Shared fixtures. HF_HUB_OFFLINE is set before anything imports huggingface_hub, so a
missing model fails at once instead of waiting on the network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "output"


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2 converted to a safetensors folder (cached across runs)."""
    from core import models

    return Path(models.local_folder("embedded"))


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from core import models

    return models.load_tokenizer("embedded")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template: fast enough
    to train for a few steps in well under a second each."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture()
def saves(tmp_path, monkeypatch) -> Path:
    """An empty saves/ folder for one test (the runner and CLI honour PEFT_STUDIO_SAVES)."""
    path = tmp_path / "saves"
    path.mkdir()
    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(path))
    return path


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT
