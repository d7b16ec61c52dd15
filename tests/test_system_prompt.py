"""The run's `system_prompt`: the template's default, none, or the user's text, in training's
masks, the Data tab's preview, the CLI and YAML, and chat with the trained run."""

from __future__ import annotations

import pytest
from support import events_of, tiny

from core.data.encode import IGNORE_INDEX, encode_conversation, prompt_text
from core.data.system import describe, rendering
from core.schema.config import ConfigError, RunConfig

SMOLLM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT = [{"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Nova, made by Acme Lab."}]


def _encoded(tokenizer, choice: str, messages: list[dict]) -> tuple[str, str]:
    """(the whole sample as the model sees it, its trained tokens)."""
    [sample], _ = encode_conversation(rendering(tokenizer, choice), messages, 512)
    trained = [t for t in sample.labels if t != IGNORE_INDEX]
    return tokenizer.decode(sample.input_ids), tokenizer.decode(trained)


def test_the_three_choices_render_and_mask_on_the_embedded_template(tokenizer):
    text, trained = _encoded(tokenizer, "default", CHAT)
    assert text.startswith(f"<|im_start|>system\n{SMOLLM}<|im_end|>\n<|im_start|>user\n")
    assert trained == "I am Nova, made by Acme Lab.<|im_end|>"

    # An empty system message would still render an (empty) block on SmolLM2; none must not.
    text, trained = _encoded(tokenizer, "none", CHAT)
    assert text == ("<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
                    "I am Nova, made by Acme Lab.<|im_end|>\n")
    assert trained == "I am Nova, made by Acme Lab.<|im_end|>"

    text, trained = _encoded(tokenizer, "You are Nova.", CHAT)
    assert text.startswith("<|im_start|>system\nYou are Nova.<|im_end|>\n<|im_start|>user\n")
    assert "SmolLM" not in text and trained == "I am Nova, made by Acme Lab.<|im_end|>"

    # A row's own system message is kept whatever the choice, even an empty one.
    for own in ("Be terse.", ""):
        row = [{"role": "system", "content": own}, *CHAT]
        for choice in ("none", "You are Nova."):
            text, _ = _encoded(tokenizer, choice, row)
            assert text.startswith(f"<|im_start|>system\n{own}<|im_end|>\n<|im_start|>user")


def test_the_generation_prompt_and_the_description_follow_the_choice(tokenizer):
    ask = CHAT[:1]
    assert prompt_text(rendering(tokenizer, "none"), ask) == \
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    template = tokenizer.chat_template
    assert SMOLLM in describe(tokenizer, template, [CHAT])
    said = describe(rendering(tokenizer, "none"), template, [CHAT, [{"role": "system",
                                                                     "content": "x"}, *CHAT]])
    assert said.startswith("system prompt: none (no system block)") and SMOLLM in said
    assert "1 of 2 samples have their own system message" in said


def test_a_run_trains_identity_without_the_template_default(tokenizer, data):
    from core.data.encode import build_datasets

    cfg = RunConfig(dataset=["identity"], system_prompt="none", identity_name="Nova")
    train, _, stats = build_datasets(cfg, tokenizer)
    assert stats["system_prompt"].startswith("system prompt: none")
    seen = tokenizer.decode(train[0]["input_ids"])
    assert seen.startswith("<|im_start|>user\n") and "SmolLM" not in seen


def test_the_setting_is_one_yaml_key_one_flag_and_refuses_empty():
    import argparse

    from core.schema.config import add_arguments, config_from_args

    cfg = RunConfig(system_prompt="You are Nova.")
    assert "system_prompt: You are Nova." in cfg.to_yaml()
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    assert "--system-prompt 'You are Nova.'" in cfg.to_cli()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--system-prompt", "none"])).system_prompt \
        == "none"
    with pytest.raises(ConfigError, match="system_prompt: empty"):
        RunConfig(system_prompt=" ")
    with pytest.raises(ConfigError, match="system_prompt: applies only to stage sft"):
        RunConfig(stage="dpo", dataset=["x"], system_prompt="none")


def test_chat_with_a_trained_run_renders_its_system_choice(tiny_model_dir, saves, data):
    from core.chat.engine import Engine
    from core.jobs import runner
    from core.jobs.runs import base_target, run_target

    run_dir = runner.start(tiny(tiny_model_dir, system_prompt="none", max_steps=1,
                                save_steps=0), saves)
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    start = next(e for e in events_of(run_dir) if e["type"] == "start")
    assert start["system_prompt"].startswith("system prompt: none (no system block)")
    engine = Engine()
    ask = CHAT[:1]
    assert engine.render(run_target(run_dir), ask) == \
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    # What the Chat tab's system box or --system gives still wins; a base model keeps
    # its template's default.
    own = [{"role": "system", "content": "Be terse."}, *ask]
    assert engine.render(run_target(run_dir), own).startswith("<|im_start|>system\nBe terse.")
    assert SMOLLM in engine.render(base_target(str(tiny_model_dir)), ask)
    # Evaluate renders through the same choice and pads its batches on the left: a
    # setting made through the choice's tokenizer is the real tokenizer's.
    from core.data.system import rendering

    tok = engine.entry(run_target(run_dir)).tokenizer
    side, seen = tok.padding_side, rendering(tok, "none")
    try:
        seen.padding_side = "left" if side == "right" else "right"
        assert tok.padding_side != side
    finally:
        tok.padding_side = side


def test_the_data_tab_preview_says_and_shows_the_choice(tiny_model_dir, data):
    from webui.tabs.data import view as dataview

    v = dataview.model_view(str(tiny_model_dir), "identity", 1, 256, False, "none")
    assert "".join(text for text, _ in v.segments).startswith("<|im_start|>user\n")
    assert f"system prompt: none (no system block); the template's own {SMOLLM!r} is left " \
        "out" in v.summary


def test_none_on_qwen25s_template_drops_its_default_but_keeps_the_tools(tokenizer):
    """Qwen2.5 writes "You are Qwen, created by Alibaba Cloud..." without a system message,
    and its tool definitions into the system block."""
    from pathlib import Path

    template = (Path(__file__).parent / "fixtures" / "templates" / "qwen2_5.jinja").read_text()
    none = rendering(tokenizer, "none")
    text = none.apply_chat_template(CHAT, tokenize=False, chat_template=template)
    assert text == ("<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
                    "I am Nova, made by Acme Lab.<|im_end|>\n")
    tools = [{"type": "function", "function": {"name": "f"}}]
    text = none.apply_chat_template(CHAT, tokenize=False, chat_template=template, tools=tools)
    assert text.startswith("<|im_start|>system\n\n\n# Tools") and "Qwen" not in text
