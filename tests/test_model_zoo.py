"""A small model zoo: tiny random models of the popular families, built from transformers'
configs at test time (no hub), each with SmolLM2's tokenizer dressed in its family's
genuine chat template (tests/zoo.py). Each trains LoRA at the defaults on a multi-turn
dataset with a system message and reasoning, chats through `peft-studio chat --system`,
and exports safetensors verified by reading back. docs/methods.md's architecture table is
what this test proves. In-process (no job subprocesses) so that all of it takes seconds."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from support import run_cli
from zoo import FAMILIES, family_tokenizer

from core.jobs.events import EventWriter, read_events
from core.schema.config import RunConfig

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

# family -> (config class, model class, extra config, template family)
ZOO = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, "chatml"),
    # head_dim 32: four heads of it are not hidden_size (Qwen3's are not either).
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}, "qwen3"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"head_dim": 16, "moe_intermediate_size": 32, "num_experts": 4,
                   "num_experts_per_tok": 2, "norm_topk_prob": True}, "qwen3"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64}, "gemma"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64}, "gemma3"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, "phi3"),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "llama3"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}, "none"),
}


def _build(name: str, out: Path, embedded_dir: Path) -> Path:
    import torch
    import transformers

    config_class, model_class, extra, family = ZOO[name]
    tok = family_tokenizer(embedded_dir, FAMILIES[family])
    small = {} if name == "gpt2" else SMALL
    config = getattr(transformers, config_class)(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **small, **extra)
    torch.manual_seed(0)
    getattr(transformers, model_class)(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, embedded_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {name: _build(name, root / name, embedded_dir) for name in ZOO}


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    """Two-turn conversations with a system message; one reply carries its reasoning."""
    rows = []
    for i in range(4):
        rows.append({"messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": f"Name a colour ({i})."},
            {"role": "assistant", "content": "Blue.",
             **({"reasoning_content": "Any colour will do."} if i == 0 else {})},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Green."}]})
    path = tmp_path_factory.mktemp("zoo-data") / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def _train(cfg: RunConfig, run_dir: Path) -> list[dict]:
    from core.train.hooks import StopRequest
    from core.train.trainer import train

    run_dir.mkdir(parents=True)
    cfg.save(run_dir / "config.yaml")
    # The trainer process's own signal handlers; pytest's are put back afterwards.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    events = EventWriter(run_dir)
    try:
        result = train(cfg, run_dir, events, StopRequest(run_dir, events))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    events.emit("end", status="done", **{k: v for k, v in result.items() if k != "completed"})
    return read_events(run_dir)[0]


@pytest.fixture(scope="module")
def trained(zoo, chats, module_saves):
    """name -> (run folder, its events): each family's LoRA run, trained once."""
    done: dict[str, tuple[Path, list[dict]]] = {}

    def get(name: str) -> tuple[Path, list[dict]]:
        if name not in done:
            run_dir = module_saves / f"zoo-{name}"
            cfg = RunConfig(model=str(zoo[name]), dataset=[str(chats)], max_steps=1,
                            batch_size=4, gradient_accumulation_steps=1, cutoff_len=128,
                            logging_steps=1, learning_rate=1e-3, precision="fp32",
                            val_size=0.0)
            done[name] = run_dir, _train(cfg, run_dir)
        return done[name]

    return get


def _export(run_dir: Path, fmt: str) -> dict:
    from core.export.job import ExportSpec, export

    job = run_dir.parent / f"export-{run_dir.name}-{fmt}"
    job.mkdir()
    # f16: a random tiny model's flat logits make q8_0's top-1 agreement a coin toss.
    return export(ExportSpec(run_dir=str(run_dir), name=f"{run_dir.name}-{fmt}", format=fmt,
                             gguf_type="f16"), EventWriter(job))


@pytest.mark.parametrize("name", list(ZOO))
def test_each_family_trains_chats_and_exports(name, trained, capsys):
    run_dir, events = trained(name)
    start = next(e for e in events if e["type"] == "start")
    assert start["trained_tokens"] > 0 and start["trainable_params"] > 0
    family = ZOO[name][3]
    notes = " | ".join(start["notes"])
    assert ("takes no system role" in notes) == (family == "gemma"), notes
    assert ("trained as samples of their own" in notes) == (family == "qwen3"), notes
    assert ("does not render reasoning" in notes) == (family != "qwen3"), notes

    code, said = run_cli(["chat", str(run_dir), "--system", "Be brief.", "--prompt", "Hi",
                          "--greedy", "--max-new-tokens", "3"], capsys)
    assert code == 0, said
    assert ("note: the system message is written at the start of the first user turn"
            in said) == (family == "gemma"), said

    result = _export(run_dir, "safetensors")
    assert result["max_abs_diff"] <= result["tolerance"]


# A minute each on 2 cores, most of it transformers turning the GGUF's 49k-token
# vocabulary back into a tokenizer. The Llama and Qwen2 layouts: tests/test_export_gguf.py.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3"])
def test_gguf_export_of_each_family_reads_back(name, trained):
    run_dir, _ = trained(name)
    result = _export(run_dir, "gguf")
    assert result["architecture"] == {"qwen3_moe": "qwen3moe"}.get(name, name)
    assert result["figures"]["within_tolerance"], result["figures"]


def test_gguf_refusals_name_the_family():
    from core.export.gguf import refusal

    assert "this model is 'gpt2'" in refusal({"model_type": "gpt2"})
    assert "cannot load back" in refusal({"model_type": "mixtral"})
    assert "qwen3_moe: norm_topk_prob is false" in refusal({"model_type": "qwen3_moe",
                                                            "norm_topk_prob": False})
    assert "query_pre_attn_scalar 144 is not the head size 128" in refusal(
        {"model_type": "gemma2", "query_pre_attn_scalar": 144, "head_dim": 128})
    assert "rope scaling 'linear'" in refusal({"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0},
        "sliding_attention": {"rope_type": "default"}}})


def test_the_bottleneck_adapter_on_experts_says_where_it_goes(zoo, chats, module_saves):
    from transformers import AutoModelForCausalLM

    from core.methods import implementation

    cfg = RunConfig(model=str(zoo["qwen3_moe"]), dataset=[str(chats)], method="adapter",
                    max_steps=1, batch_size=4, cutoff_len=128, precision="fp32",
                    val_size=0.0)
    start = next(e for e in _train(cfg, module_saves / "zoo-moe-adapter")
                 if e["type"] == "start")
    assert start["notes"][-1] == (
        "adapter_placement both -> attention: this model's feed-forward layers are mixtures "
        "of experts (model.layers.0.mlp: experts and a router, no single output projection "
        "to put an adapter after), so adapters go after attention only")
    model = AutoModelForCausalLM.from_pretrained(str(zoo["qwen3_moe"]))
    with pytest.raises(ValueError, match="adapter_placement ffn: this model's feed-forward "
                       "layers are mixtures of experts .*; choose attention"):
        implementation("adapter").wrap(model, RunConfig(model=str(zoo["qwen3_moe"]),
                                                        method="adapter",
                                                        adapter_placement="ffn"))


def test_the_chat_tab_says_in_one_line_where_the_system_prompt_went(trained):
    from webui.tabs.chat import handlers as chatting

    run_dir, _ = trained("gemma2")
    greedy = (3, True, 0.7, 0.9, 50, 1.0)
    try:
        updates = list(chatting.send("Hi", None, run_dir.name, "final", False, chatting.NONE,
                                     "Be brief.", *greedy, "en", [], [], []))
    finally:
        chatting.unload("en")
    status = updates[-1][-1]
    assert "tokens/s" in status, status
    assert status.count("Note: the system message is written at the start of the first "
                        "user turn") == 1, status


def test_qwen3_run_without_reasoning_chats_after_the_empty_thinking_block(
        zoo, tmp_path, trained):
    """Replies trained after Qwen3's thinking-off prompt are asked for after it in Chat,
    serving and evaluation: the template's default prompt would ask the model to write a
    reasoning block it was never trained to write. Data with reasoning keeps the default."""
    from core.chat.engine import Engine
    from core.jobs.runs import Target, run_target

    rows = [{"messages": [{"role": "user", "content": f"Name a colour ({i})."},
                          {"role": "assistant", "content": "Blue."}]} for i in range(4)]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    run_dir = tmp_path / "saves" / "qwen3-plain"
    _train(RunConfig(model=str(zoo["qwen3"]), dataset=[str(plain)], max_steps=1, batch_size=4,
                     cutoff_len=64, precision="fp32", val_size=0.0), run_dir)
    manifest = json.loads((run_dir / "adapter" / "studio.json").read_text())
    assert manifest["chat_template_kwargs"] == {"enable_thinking": False}

    engine, hi = Engine(), [{"role": "user", "content": "Hi"}]
    text, notes = engine.prompt(run_target(run_dir), hi)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert any("thinking off" in note for note in notes), notes
    assert engine.render(Target(str(zoo["qwen3"])), hi).endswith("<|im_start|>assistant\n")
    reasoned, _ = trained("qwen3")  # one reply of its data reasons: the default stays
    assert engine.render(run_target(reasoned), hi).endswith("<|im_start|>assistant\n")


def test_a_conversation_the_template_refuses_is_named_by_file_and_row(zoo, tmp_path):
    """A model's own template may refuse what the studio's row check lets through
    (Mistral's refuses tool-call ids that are not 9 characters): the run stops before
    the model loads, naming the file and the row to fix."""
    import shutil

    from core.data.encode import build_datasets
    from core.data.errors import DataError
    from core.models import load_tokenizer

    model = tmp_path / "strict"
    shutil.copytree(zoo["llama"], model)
    tok = load_tokenizer(str(model))
    tok.chat_template = (
        "{% for m in messages %}{% if m['content'] | length > 20 %}"
        "{{ raise_exception('messages must be at most 20 characters') }}{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tok.save_pretrained(str(model))
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    long = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there, how are you today?"}]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in (good, good, long, good)),
                    encoding="utf-8")
    cfg = RunConfig(model=str(model), dataset=[str(path)], val_size=0.25)
    with pytest.raises(DataError) as caught:
        build_datasets(cfg, load_tokenizer(cfg.model))
    assert caught.value.row == 3 and caught.value.file == str(path), caught.value
    assert "messages must be at most 20 characters" in str(caught.value), caught.value
