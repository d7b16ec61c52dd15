"""Encoding with SmolLM2's real tokenizer and chat template: masking, truncation, packing,
pre-training blocks, and the whole build from the bundled datasets."""

from __future__ import annotations

import json

import pytest

from core.data import encode
from core.data.encode import (
    IGNORE_INDEX,
    Encoded,
    build_datasets,
    encode_messages,
    encode_text,
    pack,
    preview,
    token_lengths,
)
from core.data.formats import DataError
from core.data.loader import load_examples
from core.schema.config import RunConfig

CHAT = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "你好吗？"},
    {"role": "assistant", "content": "我很好，谢谢。"},
]


def trained_text(tokenizer, enc: Encoded) -> str:
    return tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])


def test_only_replies_and_their_end_of_turn_are_trained(tokenizer):
    enc = encode_messages(tokenizer, CHAT, cutoff_len=1024)
    eot = "<|im_end|>"
    assert trained_text(tokenizer, enc) == f"It is 4.{eot}我很好，谢谢。{eot}"
    assert enc.input_ids == tokenizer.apply_chat_template(CHAT, tokenize=True)["input_ids"]
    # Every other position is masked, and trained positions carry the input token.
    for tok, label in zip(enc.input_ids, enc.labels, strict=True):
        assert label in (IGNORE_INDEX, tok)
    assert not enc.truncated and enc.length == len(enc.input_ids)


def test_train_on_prompt_trains_everything(tokenizer):
    enc = encode_messages(tokenizer, CHAT, cutoff_len=1024, train_on_prompt=True)
    assert enc.labels == enc.input_ids


def test_truncation_is_reported(tokenizer):
    full = encode_messages(tokenizer, CHAT, cutoff_len=1024)
    cut = encode_messages(tokenizer, CHAT, cutoff_len=20)
    assert cut.truncated and cut.length == full.length
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]


def test_preview_segments(tokenizer):
    segments = preview(tokenizer, CHAT, cutoff_len=1024)
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert "".join(text for text, _ in segments) == rendered
    assert [t for t, trained in segments if trained] == ["It is 4.<|im_end|>",
                                                         "我很好，谢谢。<|im_end|>"]
    assert all(trained for _, trained in preview(tokenizer, CHAT, 1024, train_on_prompt=True))
    short = preview(tokenizer, CHAT, cutoff_len=5)
    assert rendered.startswith("".join(t for t, _ in short)) and len(short) == 1


def test_template_that_rewrites_history_is_refused(tokenizer):
    # Numbering turns from the end makes earlier renders differ from the full one.
    template = ("{% for m in messages %}{{ (messages|length - loop.index)|string + m['role'] "
                "+ ': ' + m['content'] + '\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    odd = type(tokenizer).__new__(type(tokenizer))
    odd.__dict__ = {**tokenizer.__dict__}
    odd.chat_template = template
    with pytest.raises(DataError, match="the reply cannot be located"):
        encode_messages(odd, CHAT, cutoff_len=1024)


def test_encode_text_adds_eos_and_chunks(tokenizer):
    docs = ["The island is blue.", "Salt bread keeps for a week."]
    blocks = encode_text(tokenizer, docs, cutoff_len=4)
    stream = [t for b in blocks for t in b.input_ids]
    expected = []
    for d in docs:
        expected += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert stream == expected
    assert all(len(b.input_ids) <= 4 and b.labels == b.input_ids for b in blocks)


def test_pack_fills_sequences_without_splitting_samples():
    items = [Encoded([i] * n, [i] * n, n, False) for i, n in enumerate([6, 5, 4, 3, 2, 1], 1)]
    packed = pack(items, cutoff_len=7)
    assert sorted(len(p.input_ids) for p in packed) == [7, 7, 7]
    assert sorted(t for p in packed for t in p.input_ids) == sorted(
        t for e in items for t in e.input_ids)
    for p in packed:  # each sample stays in one piece
        runs = [t for i, t in enumerate(p.input_ids) if i == 0 or p.input_ids[i - 1] != t]
        assert len(runs) == len(set(runs))
        # Positions restart, and the label is dropped, at each sample's first token.
        starts = [i for i, t in enumerate(p.input_ids) if i == 0 or p.input_ids[i - 1] != t]
        assert [i for i, q in enumerate(p.position_ids) if q == 0] == starts
        assert [i for i, lab in enumerate(p.labels) if lab == -100] == starts


def test_identity_placeholders_are_filled(data):
    cfg = RunConfig(dataset=["identity"], identity_name="Nova", identity_author="Acme Lab")
    examples = load_examples(["identity"], cfg)
    text = json.dumps(examples, ensure_ascii=False)
    assert "{{" not in text and "Nova" in text and "Acme Lab" in text
    assert 40 <= len(examples) <= 60


def test_max_samples_applies_per_dataset(data):
    cfg = RunConfig(dataset=["identity", "sentiment"], max_samples=3)
    assert len(load_examples(cfg.dataset, cfg)) == 6


def test_build_sft_with_eval_split_and_stats(data, tokenizer):
    cfg = RunConfig(dataset=["sentiment"], cutoff_len=256, val_size=0.1, seed=1)
    train, evals, stats = build_datasets(cfg, tokenizer)
    assert (len(train), len(evals)) == (270, 30)
    assert stats["train_samples"] == 270 and stats["eval_samples"] == 30
    assert stats["truncated_samples"] == 0 and stats["max_length"] <= 256
    # Each answer is one word plus the end-of-turn token.
    assert stats["trained_tokens"] == 2 * 270
    item = train[0]
    assert set(item) == {"input_ids", "labels", "attention_mask"}
    assert len(item["input_ids"]) == len(item["labels"]) == len(item["attention_mask"])
    assert tokenizer.decode([t for t in item["labels"] if t != -100]) in (
        "positive<|im_end|>", "negative<|im_end|>")
    again, evals2, _ = build_datasets(cfg, tokenizer)
    assert again == train and evals2 == evals  # the seed fixes the split
    _, other, _ = build_datasets(cfg.replace(seed=2), tokenizer)
    assert other != evals


def test_build_with_packing(data, tokenizer):
    cfg = RunConfig(dataset=["identity"], cutoff_len=512, packing=True)
    train, evals, stats = build_datasets(cfg, tokenizer)
    assert evals is None and stats["packed"]
    assert stats["train_samples"] == len(train) < stats["examples"]
    assert all(len(i["input_ids"]) <= 512 for i in train)
    assert all(len(i["position_ids"]) == len(i["input_ids"]) and "attention_mask" not in i
               for i in train)


def test_build_pretraining_from_corpus(data, tokenizer):
    cfg = RunConfig(dataset=["corpus"], stage="pt", cutoff_len=256)
    train, _, stats = build_datasets(cfg, tokenizer)
    assert all(len(i["input_ids"]) <= 256 and i["labels"] == i["input_ids"] for i in train)
    assert stats["trained_tokens"] == sum(len(i["input_ids"]) for i in train)
    assert stats["examples"] == 40


def test_raw_text_is_refused_for_sft(data, tokenizer):
    with pytest.raises(DataError, match="'corpus' is raw text"):
        build_datasets(RunConfig(dataset=["corpus"]), tokenizer)


def test_nothing_left_to_train_on(data, tokenizer):
    # SmolLM2's default system prompt alone is longer than 16 tokens.
    cfg = RunConfig(dataset=["identity"], cutoff_len=16)
    with pytest.raises(DataError, match="nothing to train on.*cut-off"):
        build_datasets(cfg, tokenizer)


def test_all_bundled_datasets_load_and_encode(data, tokenizer):
    cfg = RunConfig()
    for name in ("identity", "sentiment", "sentiment_test", "corpus"):
        examples = load_examples([name], cfg)
        lengths = token_lengths(examples, tokenizer)
        assert len(lengths) == len(examples) > 0 and min(lengths) > 0
        if "messages" in examples[0]:
            enc = encode_messages(tokenizer, examples[0]["messages"], cfg.cutoff_len)
            assert trained_text(tokenizer, enc).endswith("<|im_end|>")
            assert lengths[0] == enc.length
        else:
            assert encode_text(tokenizer, [e["text"] for e in examples], cfg.cutoff_len)


def test_slow_tokenizer_path_matches(tokenizer, monkeypatch):
    """Tokenizers without offsets fall back to tokenizing prompt and reply apart."""
    fast = encode_messages(tokenizer, CHAT, cutoff_len=1024)
    monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
    slow = encode_messages(tokenizer, CHAT, cutoff_len=1024)
    assert trained_text(tokenizer, slow) == trained_text(tokenizer, fast)
    assert "".join(t for t, _ in preview(tokenizer, CHAT, 1024)) == \
        tokenizer.apply_chat_template(CHAT, tokenize=False)


def test_fallback_template_for_tokenizers_without_one(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", None)
    enc = encode_messages(tokenizer, CHAT[:2], cutoff_len=1024)
    assert trained_text(tokenizer, enc) == "It is 4." + tokenizer.eos_token
    assert encode.chat_template(tokenizer) == encode.FALLBACK_TEMPLATE
