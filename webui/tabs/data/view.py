"""Looking at registered datasets: the list, rows page by page, and what the model will see
(rendered with its chat template, trained tokens set apart, lengths against the cut-off)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core.data.formats import DataError
from core.data.reader import scan
from core.data.registry import load_info, read_registry, resolve
from core.jobs.plots import length_histogram
from core.schema.config import SETTINGS
from webui import guard, probe
from webui.tabs.data.upload import cell_text

PAGE_SIZE = 10
TRAINED, MASKED, SAMPLE = "trained", "masked", "next sample"
COLOR_MAP = {TRAINED: "#2da44e", MASKED: "#d8dee4", SAMPLE: "#f5d76e"}


LISTING_COLUMNS = ["name", "format", "file", "split", "description"]


def table() -> pd.DataFrame:
    """The registered datasets; while the registry is unreadable, one row saying why and
    what to do (the app still starts, see core.data.registry.load_info)."""
    reg = read_registry()
    if reg.broken:
        return pd.DataFrame([["✗ registry unreadable", "", "", "", str(reg.broken)]],
                            columns=LISTING_COLUMNS)
    rows = [[name, e.get("format", ""), e.get("file", ""), e.get("split", "train"),
             e.get("description", "")] for name, e in reg.entries.items()]
    # Entries it cannot use (another tool's) are listed with why, not hidden.
    rows += [[f"✗ {name}", "", "", "", why] for name, why in reg.problems.items()]
    return pd.DataFrame(rows, columns=LISTING_COLUMNS)


def names() -> list[str]:
    """Registered names; none while the registry is unreadable (table() says why)."""
    try:
        return list(load_info())
    except DataError:
        return []


@dataclass
class Page:
    rows: pd.DataFrame
    page: int
    pages: int
    total: int

    @property
    def caption(self) -> str:
        return f"page {self.page} of {self.pages} · {self.total} rows"


def page(name: str, number: int = 1, size: int = PAGE_SIZE) -> Page:
    """Rows of page `number` (1-based, clamped); raises DataError."""
    entry = resolve(name)
    number = max(1, int(number or 1))
    # One pass keeps only the page's rows; a page past the end costs a second one.
    found = scan(entry.path, (number - 1) * size, size, entry.text_split)
    pages = max(1, math.ceil(found.total / size))
    if number > pages:
        number = pages
        found = scan(entry.path, (number - 1) * size, size, entry.text_split)
    columns = found.columns
    frame = pd.DataFrame([[(number - 1) * size + i + 1, *(cell_text(r.get(c)) for c in columns)]
                          for i, r in enumerate(found.rows)], columns=["#", *columns])
    return Page(frame, number, pages, found.total)


Segments = list[tuple[str, str]]  # for gr.HighlightedText: (text, trained | masked)


@dataclass
class ModelView:
    segments: Segments  # the whole sample; for preference data the reply (kto) or none
    figure: Any
    summary: str
    sample: int
    count: int
    kind: str = "messages"  # messages | text | pairwise | kto
    prompt: str = ""  # preference data: the prompt as the chat template renders it
    chosen: Segments | None = None  # pairwise: the two replies, trained tokens marked
    rejected: Segments | None = None

    @property
    def shows(self) -> dict[str, bool]:
        """Which parts of the view this sample fills: the rendered prompt (preference data),
        the whole sample or the one reply, and the chosen/rejected pair."""
        preference = self.kind in ("pairwise", "kto")
        return {"prompt": preference, "sample": self.kind != "pairwise",
                "pair": self.kind == "pairwise"}


def marked(pieces: list[tuple[str, bool | None]]) -> Segments:
    # None: the divider before a reply trained as a sample of its own (core.data.encode).
    return [(text, SAMPLE if trained is None else TRAINED if trained else MASKED)
            for text, trained in pieces]


def model_view(model: str | None, dataset: str, sample: int, cutoff_len: int,
               train_on_prompt: bool, system_prompt: str = "default") -> ModelView:
    """Ask the probe how the model tokenizes `dataset`; raises probe.ProbeError, or
    ValueError for a cut-off the run settings would refuse (an API client can send NaN,
    which passes Gradio's bounds)."""
    cutoff_len, problem = SETTINGS["cutoff_len"].check(cutoff_len)
    if problem:
        raise ValueError(f"cutoff_len: {problem}")
    system_prompt = (system_prompt or "").strip() or SETTINGS["system_prompt"].default
    guard.check_browser_model(model)
    payload = {
        "model": model or SETTINGS["model"].default,
        "dataset": dataset,
        "cutoff_len": cutoff_len,
        "train_on_prompt": bool(train_on_prompt),
        "system_prompt": system_prompt,
        "identity_name": SETTINGS["identity_name"].default,
        "identity_author": SETTINGS["identity_author"].default,
    }
    answer = probe.ask("preview", payload)
    lengths, samples = answer["lengths"], answer["samples"]
    count = answer["count"]
    wanted = int(sample) if isinstance(sample, (int, float)) and math.isfinite(sample) else 1
    index = min(max(1, wanted), max(1, len(samples)))
    if answer.get("kind") in ("pairwise", "kto"):
        return _preference_view(answer, index, int(cutoff_len))
    segments = marked(samples[index - 1] if samples else [])
    cut = sum(n > cutoff_len for n in lengths)
    title = (f"{cut} of {count} samples are longer than the cut-off and would be cut"
             if cut else f"all {count} samples fit in the cut-off")
    longest = max(lengths, default=0)
    summary = (f"Sample **{index}** of {count}: {lengths[index - 1] if lengths else 0} tokens · "
               f"longest {longest} · mean {sum(lengths) / max(1, len(lengths)):.0f} · "
               f"**{cut}** cut at {cutoff_len}")
    if answer.get("kind") == "text":
        summary += " · raw text: every token is trained (stage pt)"
    if answer.get("num_samples"):
        summary += (f" · num_samples {answer['num_samples']}: that many rows are drawn from "
                    "the file (its registry entry; LLaMA-Factory's rule, rows repeat beyond "
                    "the file's)")
    if answer.get("system"):
        summary += f" · {answer['system']}"
    summary += partial_note(answer, index)
    return ModelView(segments, length_histogram(lengths, int(cutoff_len), title), summary,
                     index, count)


def partial_note(answer: dict[str, Any], index: int) -> str:
    """What the summary adds when samples were too long to tokenize whole: only what the
    cut-off can show was, so their lengths are lower bounds."""
    partial = answer.get("partial") or []
    if not any(partial):
        return ""
    chars = answer.get("measured_chars", 0)
    note = (f" · ✂ {sum(partial)} sample(s) longer than {chars:,} characters were cut: "
            "only that much of each was tokenized (all the cut-off can show), so their "
            "lengths are at least the counts shown")
    if index - 1 < len(partial) and partial[index - 1]:
        note = (f" · ✂ this sample was cut: only its first {chars:,} characters were "
                "tokenized (all the cut-off can show), so it has at least the tokens shown"
                + (f"; {sum(partial) - 1} other sample(s) too" if sum(partial) > 1 else ""))
    return note


def _preference_view(answer: dict[str, Any], index: int, cutoff_len: int) -> ModelView:
    """A pair side by side (pairwise), or one reply and its label (kto)."""
    kind, count, lengths = answer["kind"], answer["count"], answer["lengths"]
    one = answer["samples"][index - 1] if answer["samples"] else {"prompt": ""}
    rejected = answer.get("rejected_lengths")
    cut = sum(n > cutoff_len for n in [*lengths, *(rejected or [])])
    noun = "pairs" if kind == "pairwise" else "samples"
    title = (f"{cut} prompt + reply sequences are longer than the cut-off and would be cut"
             if cut else f"all {count} {noun} fit in the cut-off")
    figure = length_histogram(lengths, cutoff_len, title, rejected)
    if kind == "pairwise":
        summary = (f"Pair **{index}** of {count}: prompt + chosen "
                   f"{lengths[index - 1] if lengths else 0} tokens, prompt + rejected "
                   f"{rejected[index - 1] if rejected else 0} tokens · **{cut}** cut at "
                   f"{cutoff_len} · green tokens are the replies' trained tokens"
                   + partial_note(answer, index))
        return ModelView([], figure, summary, index, count, kind, one["prompt"],
                         marked(one.get("chosen", [])), marked(one.get("rejected", [])))
    label = "✔ desirable" if one.get("label") else "✘ undesirable"
    summary = (f"Sample **{index}** of {count}: **{label}** reply · "
               f"{lengths[index - 1] if lengths else 0} tokens with the prompt · **{cut}** "
               f"cut at {cutoff_len}" + partial_note(answer, index))
    return ModelView(marked(one.get("completion", [])), figure, summary, index, count, kind,
                     one["prompt"])
