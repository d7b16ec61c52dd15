"""Chat: replies stream from a worker subprocess, compare mode, unload, the terminal command.

One tiny run, trained through the runner on a single row with a high learning rate, so
that its greedy reply is that row's answer: a trained adapter visibly changes the answer.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from support import ANSWER, PROMPT

from core.chat.engine import ChatClient, GenerationSettings
from core.jobs.runs import base_target, checkpoints, finished_runs, run_target

ROOT = Path(__file__).resolve().parent.parent
GREEDY = GenerationSettings(max_new_tokens=16, do_sample=False)


@pytest.fixture(scope="module")
def client():
    c = ChatClient()
    yield c
    c.unload()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_run_lists_its_result_and_checkpoints(code_run):
    assert code_run in finished_runs(code_run.parent)
    assert list(checkpoints(code_run)) == ["final", "step-15"]
    target = run_target(code_run)
    assert target.trained == str(code_run / "adapter")


def test_reply_streams_in_chunks_from_the_worker(code_run, client):
    events = list(client.events(run_target(code_run), user(PROMPT), GREEDY))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["loading", "loaded"] and kinds[-1] == "done"
    chunks = [e["text"] for e in events if e["type"] == "chunk"]
    assert len(chunks) >= 3, chunks
    assert "".join(chunks) == events[-1]["text"] == ANSWER
    assert events[-1]["tokens"] > 3 and not events[-1]["stopped"]
    assert client.pid != os.getpid()


def test_compare_mode_base_and_fine_tuned_answer_differently(code_run, client):
    tuned = run_target(code_run)
    base = base_target(tuned.model)
    assert client.load(tuned)["shared_base"] is False
    # The base answers through the loaded adapter model with the adapter switched off.
    assert client.load(base)["shared_base"] is True
    answers = {t.label: "".join(client.stream(t, user(PROMPT), GREEDY)) for t in (base, tuned)}
    assert answers[tuned.label] == ANSWER
    assert answers[base.label] != ANSWER
    checkpoint = run_target(code_run, "step-15")
    assert "".join(client.stream(checkpoint, user(PROMPT), GREEDY))


def test_stop_ends_a_reply_early(code_run, client):
    base = base_target(run_target(code_run).model)
    long = GenerationSettings(max_new_tokens=400, do_sample=True, temperature=1.0)
    done = None
    for event in client.events(base, user("Tell me a story."), long):
        if event["type"] == "chunk":
            client.stop()
        if event["type"] == "done":
            done = event
    assert done["stopped"] and done["tokens"] < 400
    # An abandoned stream leaves the worker in step for the next request.
    stream = client.stream(base, user("Again."), long)
    next(stream)
    stream.close()
    assert "".join(client.stream(run_target(code_run), user(PROMPT), GREEDY)) == ANSWER


def test_worker_errors_reach_the_caller_and_it_stays_up(client):
    from core.chat.engine import ChatError
    from core.jobs.runs import Target

    with pytest.raises(ChatError, match="not found"):
        list(client.stream(Target("/no/such/model"), user("hi"), GREEDY))
    assert client.alive


def test_unload_ends_the_worker_and_frees_its_memory(code_run, client):
    pid = client.pid
    assert pid and Path(f"/proc/{pid}").exists() and client.loaded
    client.unload()
    assert not client.alive and client.loaded == {}
    assert not Path(f"/proc/{pid}").exists()  # ended and reaped: its memory is back
    # Lazy again: the next message starts a fresh worker and loads the model.
    assert "".join(client.stream(run_target(code_run), user(PROMPT), GREEDY)) == ANSWER
    assert client.pid != pid


def test_cli_one_prompt_interactive_session_and_base_only(code_run, monkeypatch, capsys):
    # In-process: `peft-studio chat` runs its engine in its own process anyway, so this is
    # the terminal's code path without paying for another interpreter start.
    from core.cli.main import main

    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(code_run.parent))
    assert main(["chat", code_run.name, "--prompt", PROMPT, "--greedy"]) == 0
    assert capsys.readouterr().out.strip() == ANSWER
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPT}\n/reset\n{PROMPT}\n\n"))
    assert main(["chat", code_run.name, "--greedy"]) == 0
    assert capsys.readouterr().out.count(ANSWER) == 2
    assert main(["chat", str(code_run), "--base-only", "--prompt", PROMPT, "--greedy",
                 "--max-new-tokens", "8"]) == 0
    assert "pineapple" not in capsys.readouterr().out


def test_cli_unknown_run_is_an_error(saves, capsys):
    from core.cli.main import main

    assert main(["chat", "nope", "--prompt", "hi"]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_model_streams_a_sentence():
    c = ChatClient()
    try:
        settings = GenerationSettings(max_new_tokens=24, do_sample=False)
        events = list(c.events(base_target("embedded"),
                               user("What is the capital of France? One short sentence."),
                               settings))
    finally:
        c.unload()
    chunks = [e["text"] for e in events if e["type"] == "chunk"]
    assert len(chunks) >= 3
    assert "Paris" in events[-1]["text"]


def test_lora_answers_merged_and_switches_cleanly_to_the_base(code_run):
    from core.chat.engine import Engine, _merged

    engine = Engine()
    tuned = run_target(code_run)
    base = base_target(tuned.model)
    engine.load(tuned)
    engine.load(base)

    def answer(target) -> str:
        return "".join(engine.stream(target, user(PROMPT), GREEDY))

    assert engine.entry(tuned).merge
    assert answer(tuned) == ANSWER and _merged(engine.entry(tuned).model)
    assert answer(base) != ANSWER and not _merged(engine.entry(tuned).model)
    assert answer(tuned) == ANSWER


def test_a_prompt_longer_than_the_context_is_refused_before_generating(code_run, client):
    """The tiny model's context is 512 tokens: a longer message is refused with both
    counts, nothing generated, and the worker answers the next message."""
    from core.chat.engine import ChatError

    base = base_target(run_target(code_run).model)
    events = []
    with pytest.raises(ChatError, match=r"conversation is [\d,]+ tokens and this model's "
                                        r"context is 512: nothing was generated"):
        for event in client.events(base, user("hello " * 600), GREEDY):
            events.append(event)
    assert not [e for e in events if e["type"] == "chunk"]
    assert "".join(client.stream(run_target(code_run), user(PROMPT), GREEDY)) == ANSWER


def test_stop_ends_the_prefill_and_a_reply_stops_at_the_contexts_end(code_run):
    """A Stop already pressed when a long prompt starts its prefill ends it at the first
    layer (generate's own stopping criteria run only after a token); a prompt near the
    end of the context gets only the room left, not a crash past it."""
    import threading

    from core.chat.engine import Engine, Reply
    from core.chat.limits import room_for_reply

    engine = Engine()
    base = base_target(run_target(code_run).model)
    model = engine.entry(base).model
    ran = []
    hooks = [layer.register_forward_hook(lambda *a: ran.append(1))
             for layer in model.model.layers]
    stop, reply = threading.Event(), Reply()
    stop.set()
    long = GenerationSettings(max_new_tokens=100, do_sample=False)
    assert list(engine.stream(base, user("hello " * 480), long, stop, reply)) == []
    assert ran == [] and reply.stopped and reply.tokens == 0
    for hook in hooks:
        hook.remove()
    reply = Reply()
    list(engine.stream(base, user("hello " * 480), long, threading.Event(), reply))
    tok = engine.entry(base).tokenizer
    prompt = len(tok(tok.apply_chat_template(user("hello " * 480), tokenize=False,
                                             add_generation_prompt=True))["input_ids"])
    assert 0 < reply.tokens <= 512 - prompt < 100, (reply.tokens, prompt)
    assert room_for_reply(500, 512, 100) == 12 and room_for_reply(5, None, 100) == 100


def test_cli_chat_refuses_a_prompt_longer_than_the_context(code_run, capsys):
    from core.cli.main import main

    assert main(["chat", str(code_run), "--prompt", "hello " * 600]) == 2
    err = capsys.readouterr().err
    assert "error: the conversation is" in err and "context is 512" in err
    assert "Traceback" not in err
