"""Evaluate a finished run against its base model: `python -m core.evaluate JOB/eval.yaml`.

A job folder per evaluation, RUN/evals/<time>/: eval.yaml (what to do), events.jsonl
(progress, end), log.txt, process.json and, when done, results.json. The run's past
evaluations are the list of those folders. The job is a subprocess for the same reasons
as training: the UI polls files, holds no weights, and a closed tab stops nothing.

For the base and the fine-tuned model it reports the loss on the reference answers
(assistant tokens only, exactly the tokens training learned) with its perplexity, and
greedy answers scored with exact match, BLEU-4 and ROUGE-L (core.evaluate.metrics). On pairwise
data (a chosen and a rejected reply per prompt) it reports preference accuracy instead:
the share of pairs whose chosen reply the model finds likelier, and the mean margin
(core.evaluate.preference), with every pair's margins.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.evaluate.metrics import METRIC_KEYS, PREFERENCE_KEYS
from core.fsutil import atomic_write_text
from core.jobs.events import EventWriter
from core.jobs.job import describe_progress, follow
from core.jobs.runs import base_target, resolve_run, run_config, run_target
from core.schema.jobs import EVALUATION
from core.schema.setting import add_flags, check_fields

SPEC_FILE = "eval.yaml"
RESULTS = "results.json"


@dataclass
class EvalSpec:
    run_dir: str
    dataset: list[str]
    checkpoint: str = "final"
    max_samples: int = EVALUATION["max_samples"].default
    max_new_tokens: int = EVALUATION["max_new_tokens"].default
    batch_size: int = EVALUATION["batch_size"].default
    cutoff_len: int = EVALUATION["cutoff_len"].default
    include_base: bool = True

    def __post_init__(self) -> None:
        """Bounds from core.schema.jobs.EVALUATION; raises SettingsError (a ValueError)."""
        check_fields(self, EVALUATION.values())

    @classmethod
    def load(cls, path: Path) -> EvalSpec:
        return cls(**yaml.safe_load(path.read_text(encoding="utf-8")))


# -- starting and listing (UI and CLI side: no torch) ------------------------------------
def default_dataset(run_dir: Path) -> str | None:
    """The held-out split of the run's training data, when the registry has one."""
    from core.data.registry import test_sets

    try:
        trained_on = set(run_config(run_dir).dataset)
    except Exception:
        return None
    return next((t for t, of in test_sets().items() if of in trained_on), None)


def start(spec: EvalSpec) -> Path:
    """Start an evaluation job; return its folder."""
    from core.jobs.job import start_job

    return start_job(Path(spec.run_dir) / "evals", "core.evaluate", asdict(spec), SPEC_FILE)


@dataclass
class EvalJob:
    path: Path
    status: str
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    results: dict[str, Any] | None = None
    spec: dict[str, Any] = field(default_factory=dict)


def job_state(job: Path) -> EvalJob:
    from core.jobs.job import read_job

    state = read_job(job, SPEC_FILE)
    results = None
    if (job / RESULTS).is_file():
        results = json.loads((job / RESULTS).read_text(encoding="utf-8"))
    progress = state.progress
    return EvalJob(job, state.status, progress.get("done", 0), progress.get("total", 0),
                   progress.get("message", ""), state.end.get("error"), results, state.spec)


def past_evaluations(run_dir: Path) -> list[EvalJob]:
    """Every evaluation of a run, newest first."""
    jobs = [p for p in (Path(run_dir) / "evals").glob("*") if (p / SPEC_FILE).is_file()]
    return [job_state(p) for p in sorted(jobs, key=lambda p: p.name, reverse=True)]


# -- the job (subprocess side) -----------------------------------------------------------
@dataclass
class Sample:
    messages: list[dict[str, str]]  # the conversation up to the reply to predict
    reference: str


def load_samples(dataset: list[str], max_samples: int) -> list[Sample]:
    from types import SimpleNamespace

    from core.data.loader import load_examples
    from core.schema.config import SETTINGS

    cfg = SimpleNamespace(max_samples=0, identity_name=SETTINGS["identity_name"].default,
                          identity_author=SETTINGS["identity_author"].default)
    samples = []
    for ex in load_examples(dataset, cfg):
        messages = ex.get("messages")
        if not messages or messages[-1]["role"] != "assistant":
            continue  # raw text has no answer to compare with
        samples.append(Sample(messages[:-1], messages[-1]["content"]))
    if not samples:
        raise ValueError(f"{', '.join(dataset)} has no prompts with reference answers "
                         "(raw text datasets cannot be scored)")
    return samples[:max_samples] if max_samples > 0 else samples


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def reference_loss(entry: Any, samples: list[Sample], spec: EvalSpec,
                   tick: Any) -> dict[str, float]:
    """Mean loss per reference-answer token, and its perplexity."""
    import torch
    import torch.nn.functional as F

    from core.data.encode import IGNORE_INDEX, encode_messages

    tok = entry.renderer  # the run's system prompt choice, as Chat renders it
    encoded = [encode_messages(tok, s.messages + [{"role": "assistant", "content": s.reference}],
                               spec.cutoff_len) for s in samples]
    total_nll, total_tokens = 0.0, 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for batch in _batches(encoded, spec.batch_size):
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels))
                               for e in batch])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids))
                             for e in batch])
        with entry.active() as module, torch.inference_mode():
            device = module.device
            logits = module(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits, labels = logits[:, :-1].float(), labels[:, 1:].to(logits.device)
        total_nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
        total_tokens += int((labels != IGNORE_INDEX).sum())
        tick(len(batch))
    loss = total_nll / max(total_tokens, 1)
    return {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50.0)), 3),
            "loss_tokens": total_tokens}


def greedy_answers(entry: Any, samples: list[Sample], spec: EvalSpec, tick: Any) -> list[str]:
    import torch

    from core.data.encode import chat_template
    from core.methods.result import generate_extras

    tok = entry.renderer  # the run's system prompt choice, as Chat renders it
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues from the right end of each row
    answers: list[str] = []
    try:
        for batch in _batches(samples, spec.batch_size):
            texts = [tok.apply_chat_template(s.messages, tokenize=False,
                                             add_generation_prompt=True,
                                             chat_template=chat_template(tok),
                                             **entry.template_kwargs) for s in batch]
            with entry.active() as module, torch.inference_mode():
                inputs = tok(texts, return_tensors="pt", padding=True,
                             add_special_tokens=False).to(module.device)
                out = module.generate(**inputs, max_new_tokens=spec.max_new_tokens,
                                      do_sample=False, temperature=None, top_p=None,
                                      top_k=None, pad_token_id=pad,
                                      **generate_extras(module))
            new = out[:, inputs["input_ids"].shape[1]:]
            answers += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
            tick(len(batch))
    finally:
        tok.padding_side = side
    return answers


def dataset_kind(dataset: list[str]) -> str:
    """"preference" when every dataset is pairwise, "answers" when none is; raises
    ValueError for a mix (their scores cannot go in one table)."""
    from core.data.registry import resolve

    formats = {resolve(d).format for d in dataset}
    if "pairwise" not in formats:
        return "answers"
    if formats != {"pairwise"}:
        raise ValueError(f"{', '.join(dataset)} mixes pairwise data with data that has "
                         "reference answers; evaluate them one at a time")
    return "preference"


def _progress(events: EventWriter, total: int) -> Any:
    """progress(message) -> tick(n), which counts n more items done under `message`."""
    done = 0

    def progress(message: str) -> Any:
        def tick(n: int) -> None:
            nonlocal done
            done += n
            events.emit("progress", done=done, total=total, message=message)
        return tick
    return progress


def evaluate(spec: EvalSpec, events: EventWriter) -> dict[str, Any]:
    from core.chat.engine import Engine
    from core.evaluate.metrics import corpus_scores, sample_scores

    run_dir = Path(spec.run_dir)
    tuned = run_target(run_dir, spec.checkpoint)
    targets = [("fine_tuned", tuned)]
    if spec.include_base:
        targets.append(("base", base_target(tuned.model)))
    if dataset_kind(spec.dataset) == "preference":
        return evaluate_preference(spec, targets, events)
    samples = load_samples(spec.dataset, spec.max_samples)
    total = 2 * len(samples) * len(targets)
    progress = _progress(events, total)
    events.emit("progress", done=0, total=total, message="loading the model")
    engine = Engine()
    models: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[str]] = {}
    for name, target in targets:
        t0 = time.time()
        entry = engine.entry(target)
        label = "base model" if name == "base" else "fine-tuned model"
        scores = reference_loss(entry, samples, spec, progress(f"{label}: loss"))
        answers[name] = greedy_answers(entry, samples, spec, progress(f"{label}: answering"))
        scores.update(corpus_scores(answers[name], [s.reference for s in samples]))
        models[name] = {"label": target.label, **scores, "seconds": round(time.time() - t0, 1)}
        print(f"{name}: {models[name]}", flush=True)
        if not hasattr(entry.model, "disable_adapter"):
            engine.unload(target)  # a whole fine-tuned model: make room for the base
    rows = []
    for i, s in enumerate(samples):
        row: dict[str, Any] = {"prompt": s.messages[-1]["content"], "reference": s.reference}
        for name in answers:
            row[name] = answers[name][i]
            row[f"{name}_scores"] = sample_scores(answers[name][i], s.reference)
        rows.append(row)
    return {
        "run": run_dir.name, "checkpoint": spec.checkpoint, "trained_dir": tuned.trained,
        "base_model": tuned.model, "dataset": spec.dataset, "samples": len(samples),
        "max_new_tokens": spec.max_new_tokens, "time": time.time(),
        "models": models, "rows": rows,
    }


def load_pairs(dataset: list[str], max_samples: int) -> list[dict[str, Any]]:
    from types import SimpleNamespace

    from core.data.loader import load_examples

    cfg = SimpleNamespace(max_samples=0, identity_name="Studio Assistant",
                          identity_author="the PEFT Studio team")
    pairs = load_examples(dataset, cfg)
    if not pairs:
        raise ValueError(f"{', '.join(dataset)} has no pairs")
    return pairs[:max_samples] if max_samples > 0 else pairs


def evaluate_preference(spec: EvalSpec, targets: list[tuple[str, Any]],
                        events: EventWriter) -> dict[str, Any]:
    """Preference accuracy and mean margin of each model on pairwise data, and for the
    tuned model against the base the implicit-reward accuracy (core.evaluate.preference)."""
    import torch

    from core.chat.engine import Engine
    from core.evaluate.preference import implicit_accuracy, pair_scores, summary

    pairs = load_pairs(spec.dataset, spec.max_samples)
    progress = _progress(events, 2 * len(pairs) * len(targets))
    events.emit("progress", done=0, total=2 * len(pairs) * len(targets),
                message="loading the model")
    engine = Engine()
    models: dict[str, dict[str, Any]] = {}
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for name, target in targets:
        t0 = time.time()
        entry = engine.entry(target)
        label = "base model" if name == "base" else "fine-tuned model"
        with entry.active() as module, torch.inference_mode():
            scores[name] = pair_scores(module, entry.tokenizer, pairs, spec.cutoff_len,
                                       spec.batch_size, progress(f"{label}: scoring replies"))
        models[name] = {"label": target.label, **summary(*scores[name]),
                        "seconds": round(time.time() - t0, 1)}
        print(f"{name}: {models[name]}", flush=True)
        if not hasattr(entry.model, "disable_adapter"):
            engine.unload(target)  # a whole fine-tuned model: make room for the base
    if "base" in scores:
        models["fine_tuned"]["implicit_reward_accuracy"] = implicit_accuracy(
            scores["fine_tuned"], scores["base"])
    rows = [{"prompt": p["prompt"][-1]["content"], "chosen": p["chosen"][-1]["content"],
             "rejected": p["rejected"][-1]["content"],
             **{f"{n}_margin": round(c[i] - r[i], 4) for n, (c, r) in scores.items()}}
            for i, p in enumerate(pairs)]
    tuned = targets[0][1]
    return {
        "kind": "preference", "run": Path(spec.run_dir).name, "checkpoint": spec.checkpoint,
        "trained_dir": tuned.trained, "base_model": tuned.model, "dataset": spec.dataset,
        "samples": len(pairs), "time": time.time(), "models": models, "rows": rows,
    }


def _job(spec: EvalSpec, job: Path, events: EventWriter) -> dict[str, Any]:
    results = evaluate(spec, events)
    atomic_write_text(job / RESULTS, json.dumps(results, indent=1, ensure_ascii=False))
    return {"output_dir": str(job),
            "summary": {k: {m: v for m, v in scores.items() if m != "label"}
                        for k, scores in results["models"].items()}}


def main(argv: list[str] | None = None) -> int:
    from core.jobs.job import run_job

    return run_job(argv, "python -m core.evaluate JOB_DIR/eval.yaml", EvalSpec.load, _job,
                   device_for=lambda spec: f"evaluation of {Path(spec.run_dir).name}")


# -- `peft-studio evaluate` --------------------------------------------------------------
def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a finished run against its base model on a dataset",
        description="Loss/perplexity on the reference answers and exact match, BLEU-4 and "
        "ROUGE-L of greedy answers, for the base and the fine-tuned model. Results go to "
        "RUN/evals/<time>/results.json.")
    p.add_argument("run", help="run name (folder under saves/) or path")
    p.add_argument("--dataset", nargs="+",
                   help="registered names or files (default: the held-out split of the "
                   "run's dataset, e.g. sentiment_test)")
    p.add_argument("--checkpoint", default="final", help="'final' or step-N")
    add_flags(p, EVALUATION.values())
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        run_dir = resolve_run(args.run)
        run_target(run_dir, args.checkpoint)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dataset = args.dataset or [d for d in [default_dataset(run_dir)] if d]
    if not dataset:
        print("error: this run's dataset has no registered test split; pass --dataset",
              file=sys.stderr)
        return 2
    try:
        spec = EvalSpec(str(run_dir), dataset, args.checkpoint, args.max_samples,
                        args.max_new_tokens, args.batch_size, args.cutoff_len,
                        not args.no_base)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from core.data.registry import dataset_problems

    for problem in dataset_problems(dataset):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    job = start(spec)
    print(f"evaluation: {job}", flush=True)
    if follow(job, describe_progress, abort_timeout=5) == "aborted":
        return 1
    state = job_state(job)
    if state.status != "done" or not state.results:
        print(f"failed: {state.error}\n(log: {job / 'log.txt'})", file=sys.stderr)
        return 1
    print(summary_table(state.results))
    return 0


def summary_table(results: dict[str, Any]) -> str:
    models = results["models"]
    names = [n for n in ("base", "fine_tuned") if n in models]
    preference = results.get("kind") == "preference"
    metrics = PREFERENCE_KEYS if preference else METRIC_KEYS
    width = 26 if preference else 14
    lines = [f"{'metric':{width}}" + "".join(f"{n:>14}" for n in names)]
    for metric in metrics:
        cells = [models[n].get(metric) for n in names]
        lines.append(f"{metric:{width}}" + "".join(
            f"{'-':>14}" if v is None else f"{v:>14.4g}" for v in cells))
    lines.append(f"({results['samples']} {'pairs' if preference else 'samples'} of "
                 f"{', '.join(results['dataset'])})")
    if preference:
        lines += ["", "pair  ranked higher (base -> fine-tuned)  prompt"]
        for i, row in enumerate(results["rows"], 1):
            ranks = " -> ".join(ranked(row, n) for n in names)
            lines.append(f"{i:>4}  {ranks:36}  {row['prompt'][-60:]!r}")
    return "\n".join(lines)


def ranked(row: dict[str, Any], model: str) -> str:
    """Which reply of a pair the model ranked higher: "chosen" is right."""
    return "chosen" if row[f"{model}_margin"] > 0 else "rejected"

