"""Evaluation: the metrics by hand, the job on a tiny run, and (slow) a real LoRA run on the
bundled sentiment set that must beat its base model on the held-out split."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support import ANSWER, PROMPT

from core.evaluate import job as ev
from core.evaluate.metrics import (
    corpus_scores,
    exact_match,
    normalize,
    rouge_l,
    sentence_bleu,
    tokenize,
)
from core.jobs import runner
from core.schema.config import RunConfig


# -- metrics -----------------------------------------------------------------------------
def test_exact_match_ignores_case_and_edge_punctuation():
    assert normalize("  Positive.\n") == "positive"
    assert exact_match("Positive.", "positive")
    assert exact_match("“是的。”", "是的")
    assert not exact_match("positive review", "positive")
    assert not exact_match("", "positive")


def test_tokens_are_words_punctuation_and_single_cjk_characters():
    assert tokenize("It's 3.5, ok!") == ["It", "'", "s", "3", ".", "5", ",", "ok", "!"]
    assert tokenize("你好world") == ["你", "好", "world"]


def test_bleu_known_values():
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == 100.0
    assert sentence_bleu("dog", "the cat sat on the mat") == 0.0
    # One-word answers are common after fine-tuning: smoothing keeps them scoreable.
    assert sentence_bleu("positive", "positive") == 100.0
    # p1 = 5/6, p2..p4 smoothed = 4/6, 2/5, 1/4 (+1 each); same length, no penalty.
    hyp, ref = "the cat is on the mat", "the cat sat on the mat"
    expected = 100 * (5 / 6 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert sentence_bleu(hyp, ref) == pytest.approx(expected)
    # Brevity penalty: a correct but short answer scores below 100.
    assert sentence_bleu("the cat", "the cat sat on the mat") < 40


def test_rouge_l_is_lcs_f1():
    # LCS of 5 words out of 6 on each side.
    assert rouge_l("the cat is on the mat", "the cat sat on the mat") == pytest.approx(
        100 * 5 / 6)
    assert rouge_l("a b c", "c b a") == pytest.approx(100 / 3)
    assert rouge_l("x", "y") == 0.0
    assert rouge_l("", "") == 100.0


def test_corpus_scores_average_samples():
    scores = corpus_scores(["positive", "negative"], ["positive", "positive"])
    assert scores == {"exact_match": 50.0, "bleu": 50.0, "rouge_l": 50.0}
    with pytest.raises(ValueError):
        corpus_scores(["a"], [])


def test_differences_are_marked_in_the_predictions_table():
    from webui.tabs.evaluate.handlers import diff_html

    marked = diff_html("the dog sat", "the cat sat")
    assert "<del" in marked and "cat" in marked and "dog" in marked
    assert diff_html("same words", "same words") == "same words"
    assert "&lt;b&gt;" in diff_html("<b>", "x")  # predictions are escaped


# -- the job -----------------------------------------------------------------------------
def _wait(job: Path, timeout: float = 600) -> ev.EvalJob:
    deadline = time.time() + timeout
    while (state := ev.job_state(job)).status == "running":
        assert time.time() < deadline, (job / "log.txt").read_text()[-3000:]
        time.sleep(0.3)
    assert state.status == "done", (job / "log.txt").read_text()[-3000:]
    return state


def test_evaluation_job_scores_base_and_fine_tuned(code_run):
    run_dir = code_run
    data = RunConfig.load(run_dir / "config.yaml").dataset[0]
    job = ev.start(ev.EvalSpec(str(run_dir), [data], max_samples=5, max_new_tokens=12))
    assert job.parent == run_dir / "evals"
    state = _wait(job)
    results = json.loads((job / "results.json").read_text())
    assert results == state.results
    tuned, base = results["models"]["fine_tuned"], results["models"]["base"]
    assert tuned["exact_match"] == 100.0 and base["exact_match"] == 0.0
    assert tuned["loss"] < base["loss"] and tuned["perplexity"] < base["perplexity"]
    assert tuned["loss_tokens"] == base["loss_tokens"] > 0  # answer tokens only, same count
    row = results["rows"][0]
    assert row["prompt"] == PROMPT and row["reference"] == ANSWER
    assert row["fine_tuned"] == ANSWER and row["fine_tuned_scores"]["bleu"] == 100.0
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 4
    assert events[-1]["type"] == "end" and events[-1]["summary"]["fine_tuned"]["exact_match"]
    # The run's history of evaluations, and the page that shows them.
    assert ev.past_evaluations(run_dir)[0].path == job  # newest first
    from webui.tabs.evaluate.handlers import metrics_html, predictions_html

    assert "Exact match" in metrics_html(results) and "pineapple" in predictions_html(results)


def test_evaluation_failure_is_reported(tiny_model_dir, saves):
    run_dir = runner.new_run_dir(RunConfig(model=str(tiny_model_dir)), saves)
    (run_dir / "config.yaml").write_text("model: x\n")
    job = run_dir / "evals" / "broken"
    job.mkdir(parents=True)
    (job / "eval.yaml").write_text(f"run_dir: {run_dir}\ndataset: [sentiment_test]\n")
    assert ev.main([str(job / "eval.yaml")]) == 1
    state = ev.job_state(job)
    assert state.status == "failed" and "no result 'final'" in state.error


# -- slow: a real LoRA run on the embedded model -------------------------------------------
@pytest.mark.slow
def test_lora_on_sentiment_beats_the_base_on_the_held_out_split(saves, output_dir):
    t0 = time.time()
    # 16 steps of 4 reviews (about a fifth of the set) already fix the answer format and
    # most labels; about 1.5 min on 2 CPU cores.
    cfg = RunConfig(model="embedded", dataset=["sentiment"], max_steps=16, learning_rate=1e-3,
                    batch_size=4, gradient_accumulation_steps=1, cutoff_len=128,
                    lr_scheduler_type="constant", warmup_steps=2, logging_steps=4,
                    run_name="sentiment-lora")
    run_dir = runner.start(cfg, saves)
    assert runner.wait(run_dir, timeout=600) == "done", (run_dir / "log.txt").read_text()[-3000:]
    trained = time.time() - t0
    assert ev.default_dataset(run_dir) == "sentiment_test"
    job = ev.start(ev.EvalSpec(str(run_dir), ["sentiment_test"], max_samples=30,
                               max_new_tokens=4, batch_size=10, cutoff_len=128))
    results = _wait(job).results
    models = results["models"]
    summary = {k: {m: models[k][m] for m in ("loss", "exact_match", "bleu", "rouge_l")}
               for k in models}
    timings = {"train_s": round(trained, 1), "eval_s": round(time.time() - t0 - trained, 1)}
    (output_dir / "eval_sentiment.json").write_text(json.dumps({**summary, **timings}, indent=1))
    print(summary, timings)
    assert results["samples"] == 30
    assert models["fine_tuned"]["exact_match"] > models["base"]["exact_match"]
    assert models["fine_tuned"]["exact_match"] >= 80
    assert models["fine_tuned"]["loss"] < models["base"]["loss"]
