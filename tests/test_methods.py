"""Every fine-tuning method on a tiny random Llama: wrap, train a few steps, save, reload,
generate, merge; plus the registry's declarations and config validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.methods import METHODS, Method, implementation
from core.schema.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parent.parent

# (method, extra settings): every method, and the LoRA variants one by one.
CASES = [
    ("lora", {}),
    ("lora", {"use_dora": True}),
    ("lora", {"use_rslora": True}),
    ("lora", {"lora_init": "pissa"}),
    ("lora", {"use_loraplus": True}),
    ("lora", {"quantization": "4bit"}),  # QLoRA, bitsandbytes on CPU
    ("ia3", {}),
    ("prefix", {}),
    ("prefix", {"prefix_projection": True, "prefix_hidden_size": 32}),
    ("prompt", {}),
    ("prompt", {"prompt_init_text": "Answer the question politely."}),
    ("ptuning", {}),
    ("ptuning", {"ptuning_encoder": "lstm", "ptuning_hidden_size": 32}),
    ("adapter", {}),
    ("freeze", {"freeze_trainable_layers": 1}),
    ("full", {}),
]


def case_id(case: tuple[str, dict]) -> str:
    method, extra = case
    return "-".join([method, *(f"{k}={v}" for k, v in extra.items())])


def batch():
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 2000, (2, 12), generator=g)
    return ids, torch.ones_like(ids)


def logits(model, ids, mask):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def train_steps(model, cfg, ids, mask, tmp_path, steps=8) -> list[float]:
    import torch
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "args"), use_cpu=True,
                             report_to="none", learning_rate=cfg.learning_rate)
    optimizer = implementation(cfg.method).create_optimizer(model, cfg, args)
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_every_method_is_tested():
    assert {m for m, _ in CASES} == set(METHODS)
    assert set(METHODS) == {"lora", "ia3", "prefix", "prompt", "ptuning", "adapter",
                            "freeze", "full"}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_method_trains_saves_reloads_and_merges(case, tiny_model_dir, tokenizer, tmp_path):
    import math

    import torch

    from core.methods.base import apply_method, load_base_for_training
    from core.methods.common import count_parameters
    from core.methods.result import load_trained, save_trained

    method, extra = case
    spec = METHODS[method]
    # fp32: the reloaded result (on a base loaded in fp32) must give the trained logits to
    # 1e-5; auto would hold the base in bf16 on a CPU with bf16 units (tests/test_precision.py)
    cfg = RunConfig(model=str(tiny_model_dir), method=method, learning_rate=1e-2,
                    precision="fp32", **extra)
    quantized = cfg.quantization != "none"
    ids, mask = batch()

    torch.manual_seed(0)
    model = load_base_for_training(cfg)
    base_logits = logits(model, ids, mask)
    _, base_total = count_parameters(model)
    model = apply_method(model, cfg)

    trainable, total = count_parameters(model)
    assert trainable > 0
    if method == "full":
        assert trainable == total
    else:
        assert trainable < total
    if quantized or spec.id in ("lora", "ia3", "adapter"):
        # Counted as real weights (4-bit weights unpacked), the base is still all there.
        assert total - trainable <= base_total <= total
    if method == "adapter":  # the up-projection starts at zero: exactly the base model
        assert torch.equal(logits(model, ids, mask), base_logits)

    losses = train_steps(model, cfg, ids, mask, tmp_path)
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses

    trained = logits(model, ids, mask)
    out = save_trained(model, tmp_path / "result", cfg, tokenizer)
    manifest = json.loads((out / "studio.json").read_text())
    assert manifest == {"method": method, "model": str(tiny_model_dir),
                        "settings": cfg.to_dict()}
    assert (out / "tokenizer_config.json").is_file()

    reloaded, tok = load_trained(out)
    again = logits(reloaded, ids, mask)
    if quantized:
        # Reloaded on the full-precision base: close to, not equal to, the 4-bit one.
        pair = torch.stack([again.flatten(), trained.flatten()])
        assert torch.corrcoef(pair)[0, 1] > 0.99
        assert (again - trained).abs().max() < 0.1 * trained.abs().max() + 0.1
        exact, _ = load_trained(out, quantized=True)
        torch.testing.assert_close(logits(exact, ids, mask), trained, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(again, trained, atol=1e-5, rtol=0)

    with torch.no_grad():
        generated = reloaded.generate(input_ids=ids[:1, :5], attention_mask=mask[:1, :5],
                                      max_new_tokens=3, min_new_tokens=3, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
    assert generated.shape == (1, 8)
    assert torch.equal(generated[0, :5], ids[0, :5])

    if spec.mergeable:
        merged = implementation(method).merge(reloaded)
        assert not hasattr(merged, "peft_config")
        torch.testing.assert_close(logits(merged, ids, mask), again, atol=1e-4, rtol=0)
    elif not spec.saves_full_model:
        assert spec.not_mergeable_reason


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt", "ptuning", "adapter", "freeze"])
def test_gradient_checkpointing_reaches_the_trainable_weights(method, tiny_model_dir):
    from core.methods.base import apply_method, load_base_for_training

    cfg = RunConfig(model=str(tiny_model_dir), method=method, gradient_checkpointing=True)
    model = apply_method(load_base_for_training(cfg), cfg)
    model.gradient_checkpointing_enable()  # what Trainer does with the setting on
    model.train()
    ids, mask = batch()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    # LoRA's A and an adapter's down-projection get no gradient while B/up are zero.
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_adapter_folder_is_self_describing(tiny_model_dir, tmp_path):
    from core.methods import adapter
    from core.methods.base import apply_method, load_base_for_training
    from core.methods.common import count_parameters

    cfg = RunConfig(model=str(tiny_model_dir), method="adapter", adapter_size=8,
                    adapter_placement="attention", adapter_activation="relu")
    model = apply_method(load_base_for_training(cfg), cfg)
    trainable, _ = count_parameters(model)
    assert trainable == 2 * (64 * 8 + 8 + 8 * 64 + 64)  # two layers, o_proj only
    implementation("adapter").save(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["modules"] == ["model.layers.0.self_attn.o_proj",
                                 "model.layers.1.self_attn.o_proj"]
    assert (config["bottleneck_size"], config["placement"], config["activation"]) == \
        (8, "attention", "relu")
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert adapter.find_targets(load_base_for_training(cfg), "ffn") == [
        "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_freeze_trains_only_the_chosen_layers(tiny_model_dir):
    from core.methods.base import apply_method, load_base_for_training

    cfg = RunConfig(model=str(tiny_model_dir), method="freeze", freeze_trainable_layers=1)
    model = apply_method(load_base_for_training(cfg), cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("model.layers.1.") for n in names)
    cfg = RunConfig(model=str(tiny_model_dir), method="freeze", freeze_trainable_layers=1,
                    freeze_from="first", freeze_extra_modules=["norm"])
    model = apply_method(load_base_for_training(cfg), cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.norm.weight" in names
    assert all(n.startswith("model.layers.0.") or n == "model.norm.weight" for n in names)
    bad = cfg.replace(freeze_extra_modules=["no_such_module"])
    with pytest.raises(ValueError, match="no_such_module"):
        apply_method(load_base_for_training(bad), bad)


def test_target_candidates(tiny_model_dir):
    from core.methods.base import apply_method, load_base_for_training
    from core.methods.common import target_candidates

    expected = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for method in ("full", "lora", "adapter"):
        cfg = RunConfig(model=str(tiny_model_dir), method=method)
        model = load_base_for_training(cfg)
        assert target_candidates(apply_method(model, cfg)) == expected, method


def test_ia3_names_the_layers_it_could_target(tiny_model_dir):
    from core.methods.base import apply_method, load_base_for_training

    cfg = RunConfig(model=str(tiny_model_dir), method="ia3", ia3_target=["c_attn"],
                    ia3_feedforward=[])
    with pytest.raises(ValueError, match="q_proj"):
        apply_method(load_base_for_training(cfg), cfg)
    cfg = RunConfig(model=str(tiny_model_dir), method="ia3", ia3_target=["k_proj"])
    with pytest.raises(ValueError, match="ia3_feedforward"):
        apply_method(load_base_for_training(cfg), cfg)


def test_loraplus_gives_b_matrices_the_higher_learning_rate(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments

    from core.methods.base import apply_method, load_base_for_training

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    lora = implementation("lora")
    for use, ratio in ((False, 16.0), (True, 16.0), (True, 4.0)):
        cfg = RunConfig(model=str(tiny_model_dir), learning_rate=1e-3, use_loraplus=use,
                        loraplus_lr_ratio=ratio)
        optimizer = lora.create_optimizer(apply_method(load_base_for_training(cfg), cfg),
                                          cfg, args)
        if not use:
            assert optimizer is None  # the Trainer builds its usual optimizer
            continue
        rates = {round(g["lr"], 9) for g in optimizer.param_groups if g["params"]}
        assert rates == {1e-3, round(1e-3 * ratio, 9)}, rates


def test_config_rejects_another_methods_setting():
    with pytest.raises(ConfigError, match="lora_rank"):
        RunConfig(method="ia3", lora_rank=4)
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        RunConfig(method="lora", num_virtual_tokens=8)
    with pytest.raises(ConfigError, match="quantization"):
        RunConfig(method="adapter", quantization="4bit")
    for method in ("prefix", "prompt", "ptuning"):  # one shared setting
        assert RunConfig(method=method, num_virtual_tokens=8).num_virtual_tokens == 8


def test_declarations_are_complete():
    for spec in METHODS.values():
        assert spec.help and spec.help_zh and spec.label and spec.label_zh, spec.id
        if not spec.mergeable and not spec.saves_full_model:
            assert spec.not_mergeable_reason, spec.id
        for s in spec.settings:
            assert s.label and s.label_zh and s.help, s.name
            if s.kind in (int, float):
                assert s.minimum is not None and s.maximum is not None, s.name
            assert s.check(s.default) == (s.default, None), s.name
        assert isinstance(spec, Method) and implementation(spec.id) is spec


def test_registry_finds_every_method_module_in_picker_order():
    assert list(METHODS) == ["lora", "ia3", "prefix", "prompt", "ptuning", "adapter",
                             "freeze", "full"]
    with pytest.raises(KeyError, match="choose one of: lora, ia3"):
        implementation("lora2")


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning", "adapter"])
def test_methods_that_cannot_merge_say_why(method):
    with pytest.raises(ValueError) as refused:
        METHODS[method].merge(object())
    assert str(refused.value) == METHODS[method].not_mergeable_reason


def test_declarations_import_no_torch():
    code = ("import sys, core.schema.config; "
            "heavy = [m for m in ('torch', 'peft', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
