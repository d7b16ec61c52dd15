"""Generation metrics: exact match, BLEU-4 and ROUGE-L, per sample and averaged.

Written by hand rather than taken from `evaluate`, `sacrebleu`, `nltk` or `rouge_score`:
the project allows no dependency beyond its core stack, and each metric is a few lines.
Scores are 0-100 (exact match is the share of exact answers, in percent).

Tokens are words and single punctuation marks; each CJK character counts as one word,
because Chinese and Japanese are written without spaces and whole sentences would
otherwise be a single token.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

# Every score an evaluation reports, in the order tables show them: key, label, and whether
# lower is better. Loss and perplexity are computed on the reference answers (core.evaluate.job).
METRICS = (
    ("exact_match", "Exact match (%)", False),
    ("bleu", "BLEU-4", False),
    ("rouge_l", "ROUGE-L", False),
    ("loss", "Loss (answer tokens)", True),
    ("perplexity", "Perplexity", True),
)
METRIC_KEYS = tuple(key for key, _, _ in METRICS)
# What an evaluation on pairwise data reports (core.evaluate.preference); higher is better for all.
PREFERENCE_METRICS = (
    ("accuracy", "Preference accuracy (chosen ranked higher)"),
    ("mean_margin", "Mean margin, log p(chosen) - log p(rejected)"),
    ("implicit_reward_accuracy", "Implicit-reward accuracy (tuning favoured chosen)"),
)
PREFERENCE_KEYS = tuple(key for key, _ in PREFERENCE_METRICS)

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_EDGE_PUNCT = string.punctuation + "。，！？：；、“”‘’（）《》「」 \t\n"


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def normalize(text: str) -> str:
    """Case, surrounding whitespace and punctuation at the ends do not make an answer
    wrong: "Positive." is the answer "positive"."""
    return " ".join(text.strip().strip(_EDGE_PUNCT).lower().split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(prediction: str, reference: str, max_n: int = 4) -> float:
    """BLEU-4 of one answer with add-one smoothing of the 2- to 4-gram precisions
    (Lin & Och 2004, "BLEU+1"): without it, any answer shorter than four words scores 0,
    which would make BLEU useless for the short answers fine-tuning sets usually have."""
    hyp, ref = tokenize(prediction.lower()), tokenize(reference.lower())
    if not hyp or not ref:
        return 100.0 if hyp == ref else 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp_grams, ref_grams = _ngrams(hyp, n), _ngrams(ref, n)
        matches = sum(min(c, ref_grams[g]) for g, c in hyp_grams.items())
        total = max(len(hyp) - n + 1, 0)
        if n > 1:
            matches, total = matches + 1, total + 1
        if matches == 0:
            return 0.0
        log_precision += math.log(matches / total) / max_n
    brevity = min(0.0, 1.0 - len(ref) / len(hyp))
    return 100.0 * math.exp(log_precision + brevity)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words against both lengths."""
    hyp, ref = tokenize(prediction.lower()), tokenize(reference.lower())
    if not hyp or not ref:
        return 100.0 if hyp == ref else 0.0
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 100.0 * 2 * precision * recall / (precision + recall)


def sample_scores(prediction: str, reference: str) -> dict[str, float]:
    return {
        "exact_match": 100.0 if exact_match(prediction, reference) else 0.0,
        "bleu": sentence_bleu(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
    }


def corpus_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Averages of the per-sample scores (BLEU averaged per sentence, as LLaMA-Factory and
    most fine-tuning reports do, so one sample's score reads the same as the mean's)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in number")
    if not predictions:
        return {"exact_match": 0.0, "bleu": 0.0, "rouge_l": 0.0}
    rows = [sample_scores(p, r) for p, r in zip(predictions, references, strict=True)]
    return {k: round(sum(r[k] for r in rows) / len(rows), 2) for k in rows[0]}
