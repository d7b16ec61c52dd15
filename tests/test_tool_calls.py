"""Tool-calling conversations (LLaMA-Factory's sharegpt `function_call`/`observation` turns
with a `tools` column, OpenAI's `tool_calls` and `role: tool`): read as written, rendered
with the model's template where it takes tools and folded into plain turns where it does
not, trained on the assistant's turns and calls with the tools' results masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import tiny

from core.data.encode import IGNORE_INDEX, encode_messages
from core.data.errors import DataError
from core.data.formats import detect_format
from core.data.loader import load_one
from core.jobs import runner

GLAIVE = Path(__file__).parent / "fixtures" / "llamafactory" / "glaive_toolcall_en_demo.json"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
OPENAI_ROW = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"sky\": \"SUNNY-CLEAR\"}"},
        {"role": "assistant", "content": "It is sunny in Paris."},
    ],
    "tools": [WEATHER],
}
# A template that renders tools itself, the way Qwen 2.5's does (shortened).
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}"
    "{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{%- for m in messages %}{%- if m.role == 'assistant' %}<|im_start|>assistant\n"
    "{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>\n{\"name\": \""
    "{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}\n"
    "</tool_call>{% endfor %}<|im_end|>\n{%- elif m.role == 'tool' %}<|im_start|>user\n"
    "<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n{%- else %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _trained(tokenizer, example) -> tuple[str, str]:
    """(the text trained on, the whole rendered text)."""
    enc = encode_messages(tokenizer, example["messages"], 4096, tools=example.get("tools"))
    trained = [t for t, label in zip(enc.input_ids, enc.labels, strict=True)
               if label != IGNORE_INDEX]
    return tokenizer.decode(trained), tokenizer.decode(enc.input_ids)


def test_llamafactory_tool_conversations_read_as_written():
    found = detect_format(["conversations", "tools"])
    assert found.confident and found.columns["tools"] == "tools" and not found.unused
    example = load_one(str(GLAIVE), None)[0]
    assert example["tools"][0]["type"] == "function"
    assert example["tools"][0]["function"]["name"] == "search_recipes"
    roles = [m["role"] for m in example["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant", "user",
                     "assistant"]
    call = example["messages"][3]
    assert call["tool_calls"] == [{"type": "function", "function": {
        "name": "search_recipes",
        "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}}]


def test_a_template_without_tools_gets_them_folded_and_masked(tokenizer):
    """SmolLM2's template knows no tools: the definitions go into the system message, the
    call into the reply as <tool_call> JSON (trained), the result into a user turn of
    <tool_response> (masked)."""
    example = load_one(str(GLAIVE), None)[0]
    trained, full = _trained(tokenizer, example)
    assert "<tools>" in full and '"name": "search_recipes"' in full
    assert '<tool_call>\n{"name": "search_recipes", "arguments": {"ingredients": ' \
           '["chicken", "bell peppers", "rice"]}}\n</tool_call>' in trained
    assert "<tool_response>" in full and "<tool_response>" not in trained
    assert "Chicken and Bell Pepper Stir Fry" not in trained.split("I found")[0]
    assert "I found two recipes for you." in trained
    assert "<tools>" not in trained and "search for recipes" not in trained.lower()


def test_a_template_with_tools_renders_them_itself(tokenizer):
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok.chat_template = TOOLS_TEMPLATE
    example = _example_from(OPENAI_ROW)
    trained, full = _trained(tok, example)
    assert "# Tools\n<tools>" in full and "You may call" not in full  # its own, not folded
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in trained
    assert "SUNNY-CLEAR" in full and "SUNNY-CLEAR" not in trained
    assert "It is sunny in Paris." in trained and "Weather in Paris?" not in trained


def _example_from(row: dict, tmp: Path | None = None) -> dict:
    import tempfile

    folder = Path(tmp or tempfile.mkdtemp())
    path = folder / "tools.json"
    path.write_text(json.dumps([row]))
    return load_one(str(path), None)[0]


@pytest.mark.parametrize(("change", "why"), [
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].pop("name"),
     "message 2 has a tool call without a function name"),
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{city"),
     "message 2: the arguments of the call to 'get_weather' are not JSON"),
    (lambda r: r["messages"].pop(2),
     "message 3 is an assistant turn where a tool turn was expected"),
    (lambda r: r["messages"].pop(), "the conversation must end with an assistant reply"),
    (lambda r: r.update(tools="[{\"description\": \"x\"}]"), "tool 1 has no name"),
])
def test_a_bad_tool_row_is_refused_naming_what_is_wrong(tmp_path, change, why):
    row = json.loads(json.dumps(OPENAI_ROW))
    change(row)
    with pytest.raises(DataError, match="row 1") as err:
        _example_from(row, tmp_path)
    assert why in str(err.value)


def test_a_tool_calling_run_trains(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, dataset=[str(GLAIVE)], max_steps=2,
                                batch_size=1, cutoff_len=512))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
