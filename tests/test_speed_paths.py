"""The fast training paths give the losses of the plain ones: loss at labelled positions
only, padding-free batches, and packed rows whose samples cannot see each other."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest

from core.jobs.events import EventWriter, read_events
from core.schema.config import RunConfig


def _run(tiny_model_dir: Path, run_dir: Path, **kw) -> list[dict]:
    from core.train.hooks import StopRequest
    from core.train.trainer import train

    run_dir.mkdir(parents=True)
    settings = dict(model=str(tiny_model_dir), dataset=["identity"], max_steps=5,
                    batch_size=3, gradient_accumulation_steps=2, cutoff_len=128,
                    logging_steps=1, learning_rate=1e-3, precision="fp32", seed=7)
    cfg = RunConfig(**{**settings, **kw})
    # The real stop request (it saves results whole); its signal handlers are the
    # trainer process's, so pytest's own are put back afterwards.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        train(cfg, run_dir, EventWriter(run_dir), StopRequest(run_dir))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return read_events(run_dir)[0]


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_labelled_loss_matches_plain_loss_step_by_step(tiny_model_dir, tmp_path, method):
    # No dropout: with the shared prefix, the prompt's dropout mask is drawn once per batch
    # (core.train.shared_prefix), so the random numbers would differ from the plain path's.
    quiet = {"lora_dropout": 0.0} if method == "lora" else {}
    plain = _run(tiny_model_dir, tmp_path / "plain", method=method, batching="padded",
                 fast_loss=False, **quiet)
    fast = _run(tiny_model_dir, tmp_path / "fast", method=method, batching="padded",
                fast_loss=True, **quiet)
    assert plain[0]["fast_loss"] is False and fast[0]["fast_loss"] is True
    assert plain[0]["shared_prefix"] is False and fast[0]["shared_prefix"] is True
    assert fast[0]["batching"] == "padded"
    plain_losses = [e["loss"] for e in plain if e["type"] == "step"]
    fast_losses = [e["loss"] for e in fast if e["type"] == "step"]
    assert len(fast_losses) == 5
    # Five steps of updates, with gradient accumulation: the gradients match too.
    assert fast_losses == pytest.approx(plain_losses, abs=1e-4)


def test_virtual_token_methods_keep_the_plain_path(tiny_model_dir, tmp_path):
    events = _run(tiny_model_dir, tmp_path / "prompt", method="prompt", max_steps=1,
                  batching="padding_free")
    start = events[0]
    assert start["fast_loss"] is False and start["batching"] == "grouped"


def _encoded(tiny_model_dir: Path, n: int):
    from core import models
    from core.data.encode import encode_messages
    from core.data.loader import load_one

    tok = models.load_tokenizer(str(tiny_model_dir), False)
    examples = load_one("identity", RunConfig(dataset=["identity"]))[:n]
    # train_on_prompt: every token is a target, so a leak across samples would show.
    return tok, [encode_messages(tok, e["messages"], 512, True) for e in examples]


def _model(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def _summed_loss(model, input_ids, labels, **kw) -> float:
    import torch

    logits = model(input_ids=input_ids, **kw).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, labels[0, 1:], reduction="sum"))


def test_packed_sample_loss_equals_its_loss_alone(tiny_model_dir):
    import torch

    from core.data.encode import pack
    from core.train import batching

    tok, encoded = _encoded(tiny_model_dir, 5)
    model = _model(tiny_model_dir)
    rows = pack(encoded, cutoff_len=sum(len(e.input_ids) for e in encoded[:3]))
    assert len(rows) >= 2 and max(len(r.position_ids) for r in rows) > 0
    features = [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids}
                for r in rows]
    batch = batching.PackedCollator(tok.pad_token_id)(features)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for row, r in enumerate(rows):
        starts = [i for i, p in enumerate(r.position_ids) if p == 0] + [len(r.input_ids)]
        for a, b in zip(starts, starts[1:], strict=False):
            ids = torch.tensor([r.input_ids[a:b]])
            with torch.no_grad():
                alone = _summed_loss(model, ids, ids)
            packed = float(torch.nn.functional.cross_entropy(
                logits[row, a:b - 1], torch.tensor(r.input_ids[a + 1:b]), reduction="sum"))
            assert packed == pytest.approx(alone, abs=1e-4 * (b - a))


def test_fast_loss_on_packed_and_padding_free_batches_equals_padded(tiny_model_dir):
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from core.data.encode import pack
    from core.train import batching, fast_loss

    tok, encoded = _encoded(tiny_model_dir, 6)
    model = _model(tiny_model_dir)
    lm = fast_loss.causal_lm(model)
    items = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    padded = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)(
        [{**i, "attention_mask": [1] * len(i["input_ids"])} for i in items])
    flat = DataCollatorWithFlattening()(items)
    rows = pack(encoded, cutoff_len=300)
    packed = batching.PackedCollator(tok.pad_token_id)(
        [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids}
         for r in rows])
    with torch.no_grad():
        reference = model(**padded).loss  # transformers' own loss, every position
        # Packing and flattening drop each sample's first label (nothing predicts it).
        assert float(fast_loss.labelled_loss(lm, padded)) == pytest.approx(
            float(reference), abs=1e-4)
        assert float(fast_loss.labelled_loss(lm, flat)) == pytest.approx(
            float(reference), abs=1e-4)
        assert float(fast_loss.labelled_loss(lm, packed)) == pytest.approx(
            float(reference), abs=1e-4)


def test_chunked_cross_entropy_equals_one_piece(monkeypatch):
    import torch

    from core.train import fast_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(37, 8, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    whole = fast_loss.chunked_cross_entropy(head, hidden, targets)
    (g_whole,) = torch.autograd.grad(whole, hidden)
    monkeypatch.setattr(fast_loss, "CHUNK", 10)
    chunked = fast_loss.chunked_cross_entropy(head, hidden, targets)
    (g_chunked,) = torch.autograd.grad(chunked, hidden)
    assert float(chunked.detach()) == pytest.approx(float(whole.detach()), rel=1e-6)
    assert torch.allclose(g_chunked, g_whole, atol=1e-6)


@pytest.mark.skipif(
    importlib.util.find_spec("liger_kernel") is None or not __import__("torch").cuda.is_available(),
    reason="Liger's kernels need CUDA and the `gpu` extra")
def test_gpu_kernels_switch_on_for_llama(tiny_model_dir):  # pragma: no cover - GPU only
    from core.train import accel

    model = _model(tiny_model_dir).cuda()
    kernels = accel.enable_gpu_kernels(model, prompt_learning=False)
    assert accel.liger_loss(kernels)


def test_grouped_batches_have_less_padding_and_every_sample_once():
    import random

    import torch

    from core.train import batching

    lengths = [random.Random(i).randint(20, 120) for i in range(52)]  # identity's size
    assert batching.mega_batch_mult(52, 8) == 4 and batching.mega_batch_mult(3000, 8) == 50

    def padding(order: list[int]) -> int:
        return sum(max(lengths[j] for j in order[k:k + 8]) * len(order[k:k + 8])
                   for k in range(0, len(order), 8)) - sum(lengths)

    torch.manual_seed(0)
    sampler = batching.grouped_sampler(lengths, 8)
    orders = [list(sampler) for _ in range(5)]
    assert all(sorted(o) == list(range(52)) for o in orders)
    assert len({tuple(o) for o in orders}) == 5  # reshuffled every epoch
    shuffled = [random.Random(s).sample(range(52), 52) for s in range(5)]
    assert sum(map(padding, orders)) < 0.8 * sum(map(padding, shuffled))


def test_packed_run_trains_and_evaluates(tiny_model_dir, tmp_path):
    events = _run(tiny_model_dir, tmp_path / "packed", max_steps=2, packing=True,
                  val_size=0.2, eval_steps=2)
    assert events[0]["batching"] == "packed" and events[0]["packed"]
    steps = [e for e in events if e["type"] == "step"]
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in steps] == [1, 2] and evals and evals[0]["eval_loss"] > 0
    # Packed rows carry no attention mask: their tokens are counted from the ids.
    assert steps[-1]["tokens_seen"] > steps[0]["tokens_seen"] > 0


def _prefixed_batch(tiny_model_dir: Path, rows: int = 4):
    """A padded batch of identity samples: the chat template's system prompt is a start
    all rows share, their lengths differ."""
    from transformers import DataCollatorForSeq2Seq

    from core.data.encode import encode_messages

    tok, encoded = _encoded(tiny_model_dir, rows)
    items = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids),
              "labels": encode_messages(tok, examples["messages"], 512, False).labels}
             for e, examples in zip(encoded, _examples(rows), strict=True)]
    return DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)(items)


def _examples(n: int) -> list[dict]:
    from core.data.loader import load_one

    return load_one("identity", RunConfig(dataset=["identity"]))[:n]


def test_shared_prefix_gives_the_plain_loss_and_gradients(tiny_model_dir):
    import torch

    from core.train import fast_loss, shared_prefix

    model = _model(tiny_model_dir).train()
    lm = fast_loss.causal_lm(model)
    assert shared_prefix.usable(lm)
    batch = _prefixed_batch(tiny_model_dir)
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "the rows should differ in length (padding)"
    targets = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[..., 1:]
    shared = shared_prefix.prefix_length({k: batch[k] for k in ("input_ids", "attention_mask")},
                                         targets != -100)
    assert shared >= shared_prefix.MIN_PREFIX

    def loss_and_grads(share: bool) -> tuple[float, list]:
        model.zero_grad()
        loss = fast_loss.labelled_loss(lm, dict(batch), share_prefix=share)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return float(loss.detach()), grads

    plain_loss, plain_grads = loss_and_grads(False)
    shared_loss, shared_grads = loss_and_grads(True)
    assert shared_loss == pytest.approx(plain_loss, abs=1e-5)
    assert len(shared_grads) == len(plain_grads) > 0
    for a, b in zip(shared_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prefix_stops_before_any_position_the_loss_reads():
    import torch

    from core.train.shared_prefix import MIN_PREFIX, prefix_length

    ids = torch.tensor([[1] * 20 + [5, 6, 7], [1] * 20 + [8, 9, 0]])
    mask = torch.tensor([[1] * 23, [1] * 22 + [0]])
    used = torch.zeros_like(ids, dtype=torch.bool)
    used[0, 21] = True
    assert prefix_length({"input_ids": ids, "attention_mask": mask}, used) == 20
    # A label predicted from inside the shared start: share only what comes before it.
    used[1, 12] = True
    assert prefix_length({"input_ids": ids, "attention_mask": mask}, used) == 12
    # Too short to pay for itself, a single row, or a packed batch: no sharing.
    used[1, MIN_PREFIX - 2] = True
    assert prefix_length({"input_ids": ids, "attention_mask": mask}, used) == 0
    assert prefix_length({"input_ids": ids[:1]}, used[:1]) == 0
    assert prefix_length({"input_ids": ids, "position_ids": ids}, used) == 0
    # Identical rows keep one token each to run batched.
    same = torch.ones((2, 30), dtype=torch.long)
    assert prefix_length({"input_ids": same}, torch.zeros_like(same, dtype=torch.bool)) == 29
