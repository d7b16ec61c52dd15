"""A tool call through the served API, driven by the official `openai` client.

No tiny random model calls a tool by itself, so one is taught to: a copy of the tiny
model whose chat template renders tools and calls (as Qwen 2.5's does, shortened) is
fully fine-tuned, through the real training path, on one conversation that calls a tool
and then answers from its result, until it repeats that conversation greedily. Served,
its call comes back as OpenAI's `tool_calls`, whole and streamed, and the call's result
sent back continues the conversation as trained.
"""

from __future__ import annotations

import json
import shutil

import pytest
from support import serving

from core.jobs import runner
from core.schema.config import RunConfig

openai = pytest.importorskip("openai")

TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}"
    "{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{%- for m in messages %}{%- if m.role == 'assistant' %}<|im_start|>assistant\n"
    "{{ m.content or '' }}{% for c in m.tool_calls or [] %}<tool_call>\n{\"name\": \""
    "{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}\n"
    "</tool_call>{% endfor %}<|im_end|>\n{%- elif m.role == 'tool' %}<|im_start|>user\n"
    "<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n{%- else %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {"id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
RESULT = "sunny"
ANSWER = "Sunny."


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """(base URL) of a server of the run taught to call get_weather."""
    root = tmp_path_factory.mktemp("serve-tools")
    base = root / "tiny-tools"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    data = root / "calls.json"
    data.write_text(json.dumps([{"tools": [WEATHER], "messages": [
        QUESTION, {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": RESULT},
        {"role": "assistant", "content": ANSWER}]}]))
    saves = root / "saves"
    saves.mkdir()
    # A full fine-tune: a LoRA on a 64-wide random model learns these ~30 tokens far
    # slower (measured: still garbled after 40 steps).
    run = runner.start(RunConfig(
        model=str(base), dataset=[str(data)], method="full", max_steps=50, learning_rate=5e-3,
        lr_scheduler_type="constant", batch_size=1, gradient_accumulation_steps=1,
        cutoff_len=160, logging_steps=10, save_steps=1000, run_name="caller"), saves)
    assert runner.wait(run, timeout=600) == "done", (run / "log.txt").read_text()[-3000:]
    with serving(saves, ["caller"]) as (_, ready):
        yield f"http://127.0.0.1:{ready['port']}/v1"


def ask(server, messages: list[dict], **kw):
    client = openai.OpenAI(base_url=server, api_key="none", max_retries=0, timeout=60)
    return client.chat.completions.create(model="caller", messages=messages, tools=[WEATHER],
                                          temperature=0, max_tokens=40, **kw)


def test_a_tool_call_comes_back_as_tool_calls(server):
    choice = ask(server, [QUESTION]).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_a_streamed_tool_call_arrives_as_a_tool_calls_delta(server):
    chunks = [c for c in ask(server, [QUESTION], stream=True) if c.choices]
    calls = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "get_weather")]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_calls_result_sent_back_is_answered_as_trained(server):
    """The client's own next turn: the assistant's call as the API returned it, then the
    tool's result under its id."""
    call = ask(server, [QUESTION]).choices[0].message.tool_calls[0]
    reply = ask(server, [QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {
            "name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": RESULT}])
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
