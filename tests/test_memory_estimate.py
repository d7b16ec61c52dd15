"""The memory estimate shown before Start: its verdicts exactly, its sum loosely against a
measured peak, and the Train tab's text from the probe's real answer."""

from __future__ import annotations

import pytest

from core.schema.config import RunConfig
from core.train import memory_estimate as me
from webui.tabs.train import handlers as training

GB = me.GB


@pytest.mark.parametrize(("need", "capacity", "verdict"), [
    (7.9, 10.0, me.FITS), (8.0, 10.0, me.FITS), (8.01, 10.0, me.TIGHT),
    (10.0, 10.0, me.TIGHT), (10.01, 10.0, me.DOES_NOT_FIT), (1.0, 0.0, me.DOES_NOT_FIT),
])
def test_fits_tight_and_does_not_fit(need, capacity, verdict):
    assert me.verdict(need * GB, capacity * GB) == verdict


SEVEN_B = {"trainable": 40_000_000, "total": 7_000_000_000, "hidden_size": 4096,
           "num_layers": 32, "num_heads": 32, "vocab_size": 32000}


def test_what_each_setting_changes():
    base = {**RunConfig().to_dict(), "batch_size": 1, "cutoff_len": 1024}
    lora = me.estimate(SEVEN_B, base, on_gpu=True)
    # bf16 frozen weights, float32 adapter: 2 bytes x 7B is the bulk
    assert 13.0 * GB < lora.weights < 13.2 * GB
    assert lora.optimizer == 8 * 40_000_000 and lora.gradients == 4 * 40_000_000
    qlora = me.estimate(SEVEN_B, {**base, "quantization": "4bit"}, on_gpu=True)
    assert qlora.weights < lora.weights / 3
    checkpointed = me.estimate(SEVEN_B, {**base, "gradient_checkpointing": True}, on_gpu=True)
    assert checkpointed.activations < lora.activations / 5
    twice = me.estimate(SEVEN_B, {**base, "batch_size": 2}, on_gpu=True)
    assert twice.activations == pytest.approx(2 * lora.activations)
    full = {**SEVEN_B, "trainable": SEVEN_B["total"]}
    ddp = me.estimate(full, base, on_gpu=True, processes=8)
    zero2 = me.estimate(full, {**base, "distributed": "zero2"}, on_gpu=True, processes=8)
    zero3 = me.estimate(full, {**base, "distributed": "zero3"}, on_gpu=True, processes=8)
    assert zero2.weights == ddp.weights and zero2.optimizer == ddp.optimizer / 8
    assert zero3.weights == ddp.weights / 8
    offload = me.estimate(full, {**base, "distributed": "zero3", "offload": True},
                          on_gpu=True, processes=8)
    assert offload.optimizer == 0 and offload.weights == 0
    lines = me.judge(ddp, [{"name": "cuda:0", "kind": "gpu", "memory": 80 * GB}], 8)
    assert lines[0]["verdict"] == me.DOES_NOT_FIT  # full 7B tuning with plain DDP
    lines = me.judge(offload, [{"name": "cuda:0", "kind": "gpu", "memory": 80 * GB}], 8)
    assert lines[0]["verdict"] == me.FITS
    # on a CPU, every process shares the one memory
    cpu = me.judge(lora, [{"name": "CPU (RAM)", "kind": "cpu", "memory": 64 * GB}], 4)
    assert cpu[0]["need"] == 4 * lora.total


def test_train_tab_text_from_the_probe(tiny_model_dir):
    values = {"model": str(tiny_model_dir), "batch_size": 2, "cutoff_len": 96}
    result = training.count_parameters(values)
    assert result["devices"][0]["kind"] == "cpu" and result["devices"][0]["memory"] > GB
    assert result["hidden_size"] == 64 and result["num_layers"] == 2
    text = training.memory_markdown(values, result)
    assert text.startswith("Memory per process (estimate, GB): weights ")
    assert "**fits** on CPU (RAM)" in text
    # a cut-off and batch far beyond this machine's memory are said to be so
    huge = training.memory_markdown({**values, "batch_size": 4096, "cutoff_len": 131072},
                                    result)
    assert "**does not fit** on CPU (RAM)" in huge
