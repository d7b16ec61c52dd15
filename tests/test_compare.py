"""Method comparison: one queued job trains each method and writes one table."""

from __future__ import annotations

import pytest

from core.experiments import compare
from core.jobs import runner
from core.jobs.runs import list_runs
from core.schema.config import ConfigError


def test_comparison_trains_each_method_and_tabulates(tiny_model_dir, saves):
    spec = compare.CompareSpec(
        methods=["lora", "ia3", "adapter"],
        settings=dict(model=str(tiny_model_dir), dataset=["identity"], max_steps=3,
                      batch_size=2, gradient_accumulation_steps=1, cutoff_len=96,
                      logging_steps=1, learning_rate=1e-3, lora_rank=4),
        eval_dataset="sentiment_test", eval_max_samples=2,
    )
    job = compare.start(spec)
    assert runner.wait(job, timeout=600) == "done", (job / "log.txt").read_text()
    rows = compare.table(job)
    assert [r["method"] for r in rows] == ["lora", "ia3", "adapter"]
    for r in rows:
        assert r["status"] == "done"
        assert r["trainable_params"] > 0 and 0 < r["trainable_share"] < 100
        assert r["peak_memory_mb"] > 0 and r["seconds_per_step"] > 0
        assert r["final_loss"] is not None
        assert r["exact_match"] is not None
        assert (saves / r["run"] / "config.yaml").is_file()
    # Every run is an ordinary run in the history, named after the comparison.
    names = {r.name for r in list_runs()}
    assert {f"{job.name}-lora", f"{job.name}-ia3", f"{job.name}-adapter"} <= names
    assert compare.list_comparisons() == [job]


def test_bad_settings_are_refused_before_anything_starts(saves):
    with pytest.raises(ConfigError):
        compare.start(compare.CompareSpec(methods=["lora"], settings={"batch_size": 0}))
    with pytest.raises(ValueError, match="at least one method"):
        compare.start(compare.CompareSpec(methods=[]))
    assert not compare.comparisons_dir().exists() or not any(compare.comparisons_dir().iterdir())
