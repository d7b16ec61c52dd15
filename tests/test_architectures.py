"""Models of other architectures, tiny and random, built from transformers' configs: what a
default cannot do on them is adapted and said in the start event, or refused with why."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import events_of, tiny

from core.jobs import runner
from webui.live import monitor


@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer random Qwen3-MoE (4 experts, 2 a token) with SmolLM2's tokenizer: its
    experts' weights are fused 3-D parameters, as transformers 5 keeps them."""
    import torch
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    config = Qwen3MoeConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                            moe_intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-qwen3-moe")
    Qwen3MoeForCausalLM(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_lora_defaults_train_a_mixture_of_experts_and_say_what_changed(tiny_moe_dir, saves):
    from core.methods.result import load_trained

    run_dir = runner.start(tiny(tiny_moe_dir, max_steps=2))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    start = next(e for e in events_of(run_dir) if e["type"] == "start")
    assert any(n.startswith("lora_dropout 0.05 -> 0: this model keeps its experts' weights "
                            "fused (model.layers.0.mlp.experts") for n in start["notes"])
    watch, _ = monitor.poll(monitor.attach(run_dir))  # the Train tab says it too
    assert "Note: lora_dropout 0.05 -> 0" in monitor.stats(watch)
    model, _ = load_trained(run_dir / "adapter")
    trained = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert any("mlp.experts" in n for n in trained) and any("q_proj" in n for n in trained)


def test_dora_on_fused_experts_is_refused_with_the_way_out(tiny_moe_dir, saves):
    run_dir = runner.start(tiny(tiny_moe_dir, max_steps=2, use_dora=True))
    assert runner.wait(run_dir, timeout=300) == "failed"
    error = events_of(run_dir)[-1]["error"]
    assert "use_dora: this model keeps its experts' weights fused" in error
    assert "turn DoRA off" in error


def test_a_dense_model_keeps_its_dropout_and_says_nothing(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, max_steps=1))
    assert runner.wait(run_dir, timeout=300) == "done"
    start = next(e for e in events_of(run_dir) if e["type"] == "start")
    assert start["notes"] == []


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer random GPT-2: its linear layers are transformers' Conv1D (c_attn, ...)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_ia3_defaults_on_fused_layers_train_what_exists_and_say_what_not(tiny_moe_dir, saves):
    run_dir = runner.start(tiny(tiny_moe_dir, max_steps=2, method="ia3"))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    start = next(e for e in events_of(run_dir) if e["type"] == "start")
    assert any(n.startswith("ia3_target: down_proj not in this model (its linear layers: ")
               and n.endswith("only k_proj, v_proj are rescaled") for n in start["notes"])


def test_gpt2s_conv1d_layers_are_named_and_trainable(tiny_gpt2_dir, saves):
    refused = runner.start(tiny(tiny_gpt2_dir, max_steps=1, method="ia3"))
    assert runner.wait(refused, timeout=300) == "failed"
    error = events_of(refused)[-1]["error"]
    assert "ia3_target: k_proj, v_proj, down_proj not found in this model; its linear " \
           "layers are: c_attn, c_proj, c_fc" in error
    run_dir = runner.start(tiny(tiny_gpt2_dir, max_steps=2, method="ia3", run_name="named",
                                ia3_target=["c_attn", "c_fc"], ia3_feedforward=["c_fc"]))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
