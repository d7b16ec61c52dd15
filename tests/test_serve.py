"""Serving: the real server (`peft-studio serve`, a job process) driven by the official
`openai` client, and its answers checked against the Chat tab's engine.

One server for the module, serving three runs of one base side by side (the code-word
run; a copy of it whose LoRA update is zeroed, so it must answer as the base does; a copy
whose chat template takes tools) and the base itself, with an API key and a queue of 8.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest
from support import ANSWER, PROMPT, run_cli, serving

openai = pytest.importorskip("openai")

KEY = "test-key-0123456789"
PROMPTS = [PROMPT, "Name a colour."]
# A chat template that takes tool definitions (as Qwen's and Llama 3's do).
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def _copy_run(run: Path, saves: Path, name: str) -> Path:
    """The run under another name, its end event pointing at its own result."""
    copy = saves / name
    shutil.copytree(run, copy)
    events = copy / "events.jsonl"
    events.write_text(events.read_text().replace(str(run), str(copy)))
    return copy


def _zero_lora_update(run: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    save_file({k: v * 0 if "lora_B" in k else v for k, v in tensors.items()}, str(path))


@pytest.fixture(scope="module")
def saves(code_run, tmp_path_factory) -> Path:
    saves = tmp_path_factory.mktemp("serve") / "saves"
    saves.mkdir()
    _copy_run(code_run, saves, "code-word")
    _zero_lora_update(_copy_run(code_run, saves, "zeroed"))
    tooled = _copy_run(code_run, saves, "tooled")
    (tooled / "adapter" / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    return saves


@pytest.fixture(scope="module")
def server(saves):
    """(job folder, base URL) of the server, started as a user starts it; stopped after."""
    with serving(saves, ["code-word", "zeroed", "tooled", "--base", "--api-key", KEY,
                         "--queue-size", "8"]) as (job, ready):
        # Both runs and the base answer from one copy of the base's weights.
        assert ready["copies"] == 1, ready
        yield job, f"http://127.0.0.1:{ready['port']}/v1"


def client(server, key: str = KEY):
    return openai.OpenAI(base_url=server[1], api_key=key, max_retries=0, timeout=60)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def ask(server, model: str, text: str, **kw) -> str:
    reply = client(server).chat.completions.create(
        model=model, messages=user(text), temperature=0, max_tokens=16, **kw)
    return reply.choices[0].message.content


def test_models_are_listed_under_their_run_names_and_the_base(server):
    ids = {m.id for m in client(server).models.list().data}
    assert {"code-word", "zeroed", "tooled", "base"} <= ids and len(ids) == 5  # + its name


def test_tool_definitions_reach_a_template_that_takes_them(server):
    c = client(server)
    plain, tooled = (c.chat.completions.create(
        model="tooled", messages=user("What is the weather in Paris?"), temperature=0,
        max_tokens=4, **kw) for kw in ({}, {"tools": [WEATHER]}))
    # Rendered into the prompt: the definitions' tokens are counted in it.
    assert tooled.usage.prompt_tokens > plain.usage.prompt_tokens + 20


def test_chat_completion_answers_as_trained_with_usage(server):
    reply = client(server).chat.completions.create(
        model="code-word", messages=user(PROMPT), temperature=0, max_tokens=16)
    choice = reply.choices[0]
    assert choice.message.content == ANSWER and choice.finish_reason == "stop"
    assert reply.usage.prompt_tokens > 5 and 3 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_chat_completion_arrives_in_pieces(server):
    stream = client(server).chat.completions.create(
        model="code-word", messages=user(PROMPT), temperature=0, max_tokens=16, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert len(pieces) >= 3 and "".join(pieces) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 3


def test_completion_takes_the_prompt_as_written_and_stop_strings_cut(server):
    reply = client(server).completions.create(
        model="code-word", prompt="The code word is", temperature=0, max_tokens=8)
    assert reply.choices[0].text and reply.usage.completion_tokens > 0
    cut = ask(server, "code-word", PROMPT, stop=["pineapple"])
    assert cut == ANSWER[:ANSWER.index("pineapple")]


def test_greedy_answers_equal_the_chat_engines(server, saves):
    """Parity: each served model answers every prompt token for token as the Chat tab's
    engine does (the base through the tuned model with its adapter off, as in Chat)."""
    from core.chat.engine import Engine, GenerationSettings
    from core.jobs.runs import base_target, run_target

    greedy = GenerationSettings(max_new_tokens=16, do_sample=False)
    chat = {}
    for run in ("code-word", "zeroed"):
        engine = Engine()  # one Chat tab comparing a run with its base
        tuned = run_target(saves / run)
        engine.load(tuned)
        for text in PROMPTS:
            chat[run, text] = "".join(engine.stream(tuned, user(text), greedy))
            if run == "code-word":
                chat["base", text] = "".join(engine.stream(base_target(tuned.model),
                                                           user(text), greedy))
    served = {(m, t): ask(server, m, t) for m, t in chat}
    assert served == chat
    assert chat["code-word", PROMPT] == ANSWER
    assert all(chat["zeroed", t] == chat["base", t] for t in PROMPTS)


def test_twelve_clients_at_once_eight_queued_and_answered_the_rest_429(server):
    """While one reply streams, 12 clients ask at once: the queue (8) holds 8, which are
    all answered once it ends; the 4 beyond it are refused at once, with 429."""
    long = client(server).chat.completions.create(
        model="base", messages=user("Tell me a story."), max_tokens=400, temperature=1.0,
        seed=1, stream=True)
    next(iter(long))  # the server is answering it: the next ones wait in the queue

    def one(_):
        try:
            return ask(server, "code-word", PROMPT)
        except openai.RateLimitError as exc:
            assert "busy" in str(exc)
            return 429

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        wait(futures, timeout=30, return_when=FIRST_COMPLETED)
        time.sleep(0.5)  # the other refusals: each is answered at once
        long.close()  # a client that goes away ends its generation
        results = [f.result() for f in futures]
    assert sorted(results, key=str) == [429] * 4 + [ANSWER] * 8, results


# Eight requests of a burst, each with settings of its own: runs and the base, lengths,
# a stop string, a seeded sampled reply, streamed and not, and a prompt that fills the
# context but for a few tokens (so it cannot run as long as the base's other reply).
BURST = [("code-word", PROMPT, {}), ("code-word", "Name a colour.", {"max_tokens": 6}),
         ("code-word", PROMPT, {"stop": ["pineapple"]}),
         ("code-word", "Name a colour.", {"temperature": 0.9, "seed": 5}),
         ("code-word", PROMPT, {"stream": True}), ("zeroed", PROMPT, {}),
         ("base", "Name a colour.", {"stream": True}), ("base", "word " * 470, {"max_tokens": 4})]


def _burst_reply(server, i: int) -> tuple[str, int]:
    model, text, kw = BURST[i]
    kw = {"temperature": 0, "max_tokens": 16, **kw}
    c = client(server)
    if kw.get("stream"):
        chunks = list(c.chat.completions.create(model=model, messages=user(text),
                                                stream_options={"include_usage": True}, **kw))
        return ("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
                chunks[-1].usage.completion_tokens)
    reply = c.chat.completions.create(model=model, messages=user(text), **kw)
    return reply.choices[0].message.content, reply.usage.completion_tokens


def test_eight_clients_at_once_are_batched_and_answered_as_each_alone(server):
    """Asked one at a time, then all eight at once: the same replies, token for token
    (the seeded sampled one too), and the request log shows them answered in batches."""
    alone = [_burst_reply(server, i) for i in range(len(BURST))]
    assert alone[0][0] == ANSWER and alone[2][0] == ANSWER[:ANSWER.index("pineapple")]
    assert alone[1][1] == 6
    events = server[0] / "events.jsonl"
    seen = len(_requests(events))
    with ThreadPoolExecutor(len(BURST)) as pool:
        together = list(pool.map(lambda i: _burst_reply(server, i), range(len(BURST))))
    assert together == alone
    # A request's record is written just after its reply ends, so the last one asked
    # alone may land after `seen` was counted: the burst's are the last eight, once
    # they are all written.
    deadline = time.time() + 30
    while len(_requests(events)) < seen + len(BURST) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # and the record of the last one asked alone, if it was late
    logged = _requests(events)[-len(BURST):]
    batches = [e.get("batch", 1) for e in logged]
    assert len(batches) == len(BURST) and max(batches) > 1, batches
    assert [e["batch"] for e in logged if e.get("prompt_tokens", 0) > 400] == [1]


def _requests(events: Path) -> list[dict]:
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    return [e for e in lines if e["type"] == "request"]


def test_a_bad_key_is_refused_with_401(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong-key").models.list()


def test_oversized_and_unsupported_requests_are_refused(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError, match="context is 512 tokens"):
        c.chat.completions.create(model="base", messages=user("word " * 600))
    with pytest.raises(openai.BadRequestError, match="context"):
        c.chat.completions.create(model="base", messages=user(PROMPT), max_tokens=600)
    with pytest.raises(openai.APIStatusError) as big:
        c.chat.completions.create(model="base", messages=user("x" * (5 * 2**20)))
    assert big.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="n=2"):
        c.chat.completions.create(model="base", messages=user(PROMPT), n=2)
    # A template without tools gets them folded in as in training (core.data.tools).
    plain, folded = (c.chat.completions.create(
        model="base", messages=user(PROMPT), max_tokens=1, **kw) for kw in ({}, {"tools": [{
            "type": "function", "function": {"name": "f", "parameters": {}}}]}))
    assert folded.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    with pytest.raises(openai.NotFoundError, match="code-word"):
        c.chat.completions.create(model="nope", messages=user(PROMPT))


def test_foreign_host_and_origin_are_refused(server):
    url = server[1] + "/models"
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(url, headers=auth).status_code == 200
    assert httpx.get(url, headers={**auth, "Host": "evil.example"}).status_code == 403
    assert httpx.get(url, headers={**auth, "Origin": "https://evil.example"}).status_code == 403


def test_refused_starts_say_why_before_anything_starts(capsys, monkeypatch, saves):
    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(saves))
    monkeypatch.delenv("PEFT_STUDIO_API_KEY", raising=False)
    code, text = run_cli(["serve", "code-word", "--host", "0.0.0.0"], capsys)
    assert code == 2 and "without an API key" in text
    code, text = run_cli(["serve", "nope"], capsys)
    assert code == 2 and "no run named 'nope'" in text
    code, text = run_cli(["serve", "code-word", "--engine", "vllm"], capsys)
    assert code == 2 and "vLLM is not installed" in text


def test_the_serve_panel_shows_the_server_and_its_python_snippet_works(server, saves,
                                                                       monkeypatch, capsys):
    """The Chat tab's Serve panel, following the module's server as a page does: where it
    answers, the request log, and a Python snippet that, pasted as shown, gets an answer."""
    from webui.tabs.chat import serve as panel

    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(saves))
    assert panel.attached() == str(server[0])
    status, curl, python, log = panel.on_tick(str(server[0]), KEY)
    assert curl["visible"] and python["visible"]
    curl, python = curl["value"], python["value"]
    assert server[1] in status and "code-word" in status and "API key required" in status
    assert f"Bearer {KEY}" in curl and server[1] in curl
    assert "| code-word | 200 |" in log
    capsys.readouterr()
    exec(compile(python, "snippet", "exec"), {})  # sampled, as Chat's defaults are
    assert capsys.readouterr().out.strip()
    # Refused before anything starts: beyond loopback without a key, and no model at all.
    assert "without an API key" in panel.on_start(["code-word"], False, None, "0.0.0.0",
                                                  8000, "")[1]
    assert panel.on_start([], False, None, "127.0.0.1", 8000, "") == ["", panel.T_NO_RUNS("en")]


def test_stop_from_the_cli_leaves_no_process(server, saves, capsys, monkeypatch):
    """Last: ends the module's server."""
    job = server[0]
    pid = json.loads((job / "process.json").read_text())["pid"]
    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(saves))
    code, text = run_cli(["serve", "--status"], capsys)
    assert code == 0 and job.name in text and "code-word" in text
    code, text = run_cli(["serve", "--stop"], capsys)
    assert code == 0 and f"{job.name}: done" in text
    deadline = time.time() + 10
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
    assert run_cli(["serve", "--status"], capsys)[1].strip() == "nothing is serving"
    requests = [e for e in map(json.loads, (job / "events.jsonl").read_text().splitlines())
                if e["type"] == "request"]
    assert len(requests) > 20 and any(e.get("tokens_per_second") for e in requests)
