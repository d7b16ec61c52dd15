"""Loss masks per chat-template family, on each family's genuine template: exactly the
assistant's tokens and their end-of-turn token carry labels, every reply trained with the
context the template gives it at inference; a template without a system role gets the
system message in the first user turn; reasoning is trained where the template renders it."""

from __future__ import annotations

import pytest
from zoo import FAMILIES, family_tokenizer, trained_runs

from core.data.encode import encode_conversation
from core.data.roles import REASONING_FOLDED, SYSTEM_FOLDED

SYSTEM = {"role": "system", "content": "You answer in one word."}
U1, A1 = {"role": "user", "content": "Capital of France?"}, \
    {"role": "assistant", "content": "Paris."}
U2, A2 = {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}


@pytest.fixture(scope="module")
def tokenizers(embedded_dir):
    return {name: family_tokenizer(embedded_dir, f) for name, f in FAMILIES.items()}


def encode(tok, messages):
    return encode_conversation(tok, messages, cutoff_len=4096)


@pytest.mark.parametrize("family", ["chatml", "gemma", "gemma3", "llama3", "phi3", "qwen3",
                                    "none"])
def test_exactly_the_replies_and_their_end_of_turn_are_trained(tokenizers, family):
    tok, end = tokenizers[family], FAMILIES[family].end_of_turn
    samples, rendered = encode(tok, [SYSTEM, U1, A1, U2, A2])
    runs = trained_runs(tok, samples)
    assert sorted(runs) == sorted([f"Paris.{end}", f"Rome.{end}"]), runs
    text = tok.decode(samples[0].input_ids)
    assert "You answer in one word." in text  # the system message is not lost anywhere
    if family in ("qwen3",):
        # Qwen3's template drops an earlier reply's (empty) reasoning block once later
        # turns follow: the first reply is trained as its own sample, with the context
        # the model has when it writes it; the full conversation trains the second.
        assert len(samples) == 2 and rendered.alone == 1
        assert tok.decode(samples[1].input_ids).endswith(
            "<|im_start|>assistant\n<think>\n\n</think>\n\nParis.<|im_end|>\n")
    else:
        assert len(samples) == 1 and rendered.alone == 0
    assert (SYSTEM_FOLDED in rendered.notes) == (family == "gemma")


def test_gemma_takes_the_system_message_in_its_first_user_turn(tokenizers):
    tok = tokenizers["gemma"]
    samples, _ = encode(tok, [SYSTEM, U1, A1])
    assert tok.decode(samples[0].input_ids) == (
        "<bos><start_of_turn>user\nYou answer in one word.\n\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n")
    # Gemma 3's own template does the same with a system message: the fold matches it.
    samples3, rendered3 = encode(tokenizers["gemma3"], [SYSTEM, U1, A1])
    assert tok.decode(samples3[0].input_ids) == tok.decode(samples[0].input_ids)
    assert rendered3.notes == []


def test_qwen3_trains_no_empty_reasoning_block(tokenizers):
    tok = tokenizers["qwen3"]
    samples, rendered = encode(tok, [U1, A1])
    assert trained_runs(tok, samples) == ["Paris.<|im_end|>"]
    # the empty block is there, as context: the prompt Qwen3 gets with thinking off
    assert tok.decode(samples[0].input_ids).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\nParis.<|im_end|>\n")
    assert rendered.notes == []


@pytest.mark.parametrize("written", ["field", "inline"])
def test_qwen3_trains_reasoning_in_every_turn_with_its_context(tokenizers, written):
    tok = tokenizers["qwen3"]

    def reply(answer, why):
        if written == "field":
            return {"role": "assistant", "content": answer, "reasoning_content": why}
        return {"role": "assistant", "content": f"<think>{why}</think>{answer}"}  # LLaMA-Factory

    samples, rendered = encode(tok, [U1, reply("Paris.", "France: Paris."), U2,
                                     reply("Rome.", "Italy: Rome.")])
    assert sorted(trained_runs(tok, samples)) == [
        "<think>\nFrance: Paris.\n</think>\n\nParis.<|im_end|>",
        "<think>\nItaly: Rome.\n</think>\n\nRome.<|im_end|>"]
    # The second reply's context is the conversation as Qwen3 renders it at inference:
    # the first reply without its reasoning.
    full = tok.decode(samples[0].input_ids)
    assert "France: Paris." not in full and "Italy: Rome." in full
    assert rendered.alone == 1


def test_reasoning_on_a_template_without_it_is_trained_as_written_and_said(tokenizers):
    tok = tokenizers["chatml"]
    samples, rendered = encode(tok, [U1, {"role": "assistant", "content": "Paris.",
                                          "reasoning_content": "France: Paris."}])
    assert trained_runs(tok, samples) == [
        "<think>\nFrance: Paris.\n</think>\n\nParis.<|im_end|>"]
    assert rendered.notes == [REASONING_FOLDED]


def test_the_preview_sets_a_reply_trained_on_its_own_apart(tokenizers):
    """What the model sees (the Data tab) shows the whole conversation, then a divider,
    then the first reply as the sample it is trained in; the divider is neither trained
    nor masked text, and the Data tab marks it as the next sample."""
    from core.data.encode import preview
    from webui.tabs.data.view import SAMPLE, marked

    segments = preview(tokenizers["qwen3"], [U1, A1, U2, A2], cutoff_len=4096)
    dividers = [text for text, trained in segments if trained is None]
    assert len(dividers) == 1 and "sample 2 of 2" in dividers[0], segments
    after = "".join(text for text, _ in segments).split(dividers[0])[1]
    assert after.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nParis.<|im_end|>\n")
    assert [label for _, label in marked(segments)].count(SAMPLE) == 1
    assert all(trained is not None for _, trained in preview(tokenizers["chatml"],
                                                              [U1, A1, U2, A2], 4096))
