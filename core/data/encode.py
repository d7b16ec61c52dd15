"""Examples -> token ids and labels, exactly as the model will see them.

Chat examples are rendered with the model's own chat template. Which tokens are trained is
decided on the rendered *string*: rendering the conversation up to each assistant reply
(with and without it) gives the reply's character span, and the tokenizer's offsets map
characters to tokens. It needs no {% generation %} markers in the template. A reply that
the template renders differently once later turns follow (Qwen3 drops earlier replies'
reasoning) is trained as a sample of its own, the conversation up to it: what the model
sees when it writes that reply (`render`).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.data.formats import DataError
from core.data.roles import as_template_takes, has_reasoning
from core.data.system import choice_of, describe, rendering, with_choice
from core.data.tools import fold, template_takes_tools, uses_tools

if TYPE_CHECKING:
    from core.schema.config import RunConfig

IGNORE_INDEX = -100

# For tokenizers without a chat template (base models). The eos after each reply is what
# teaches the model to stop.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
    "{% elif m['role'] == 'user' %}{{ '### User:\n' + m['content'] + '\n\n' }}"
    "{% else %}{{ '### Assistant:\n' + m['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    length: int  # tokens before cutting at cutoff_len
    truncated: bool
    # Packed rows only: positions restarting at 0 for each packed sample.
    position_ids: list[int] | None = None


def chat_template(tokenizer: Any) -> str:
    """The template used to render chats: the tokenizer's own, else FALLBACK_TEMPLATE.
    Whoever saves a model trained with it must save it too, so chat renders the same."""
    return getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE


def with_tools(tokenizer: Any, messages: list[dict],
               tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) as this tokenizer's template gets them: as they are when it
    renders tools itself, else folded into plain turns (core.data.tools)."""
    if not uses_tools(messages, tools) or template_takes_tools(chat_template(tokenizer)):
        return messages, tools or None
    return fold(messages, tools), None


def _apply(tokenizer: Any, messages: list[dict], generation: bool,
           tools: list[dict] | None = None, **extra: Any) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation,
            chat_template=chat_template(tokenizer), **extra,
        )
    except Exception as exc:  # jinja's raise_exception and template bugs alike
        raise DataError(f"the model's chat template cannot render this conversation: {exc}") \
            from None


def as_rendered(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None,
                ) -> tuple[list[dict], list[dict] | None, list[str]]:
    """(messages, tools, notes): a conversation as this tokenizer's template takes it,
    with tools, a system role and reasoning folded where it does not (core.data.tools,
    core.data.roles) and what was folded said. A custom system prompt the tokenizer carries
    (core.data.system) comes first, so that the folding takes it in."""
    messages = with_choice(messages, choice_of(tokenizer))
    messages, tools = with_tools(tokenizer, messages, tools)
    messages, notes = as_template_takes(tokenizer, chat_template(tokenizer), messages)
    return messages, tools, notes


@dataclass
class Rendered:
    """One conversation as its training samples: (text, trained character spans) each.
    The first is the whole conversation with the replies it renders in place; then one
    sample per reply that the template renders differently once later turns follow."""

    samples: list[tuple[str, list[tuple[int, int]]]]
    notes: list[str]
    alone: int = 0  # replies trained as samples of their own
    # Replies trained after the template's thinking-off prompt (Qwen3's empty reasoning
    # block), and replies trained with reasoning of their own: what Chat must render.
    quiet: int = 0
    reasoned: int = 0


NOT_IN_PLACE = ("{n} earlier replies are trained as samples of their own, each with the "
                "conversation before it: this model's chat template renders a reply "
                "differently once later turns follow (Qwen3's drops its reasoning block), so "
                "in the whole conversation it is not what the model writes at that turn")


SAMPLE_DIVIDER = ("\n\n── sample {k} of {n} from this conversation: a reply trained on its own, "
                  "with the turns before it ──\n\n")


def render(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> Rendered:
    """The training samples of one conversation. A reply's span is what the model writes
    after the template's generation prompt: its text, tool calls and end-of-turn token,
    not the whitespace after. A reply without reasoning starts after the empty reasoning
    block a reasoning template puts there when thinking is off (Qwen3's
    `<think>\n\n</think>`): that block is context, not something to learn to write."""
    messages, tools, notes = as_rendered(tokenizer, messages, tools)
    full = _apply(tokenizer, messages, False, tools)
    in_place: list[tuple[int, int]] = []
    alone: list[tuple[str, list[tuple[int, int]]]] = []
    quiet = reasoned = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        upto = _apply(tokenizer, messages[: i + 1], False, tools)
        before, thinking_off = _prompt_before(tokenizer, messages, i, tools, upto)
        quiet += thinking_off
        reasoned += has_reasoning(msg)
        if not upto.startswith(before):
            raise DataError(
                "the model's chat template renders a reply so that the conversation before "
                "it is not where it starts, so the reply cannot be located; use another model")
        # A template may close a conversation after its last reply (Phi-3 adds eos): a
        # reply followed by more turns is in place when only that closing differs.
        span = _without_closing(tokenizer, messages[: i + 1], tools, upto,
                                (len(before), _trim(upto, len(before), len(upto))))
        if full.startswith(upto[: span[1]]):
            in_place.append(span)
        else:
            alone.append((upto, [span]))
    samples = ([(full, in_place)] if in_place or not alone else []) + alone
    if alone:
        notes.append(NOT_IN_PLACE)
    return Rendered(samples, notes, len(alone), quiet, reasoned)


def _prompt_before(tokenizer: Any, messages: list[dict], i: int,
                   tools: list[dict] | None, upto: str) -> tuple[str, bool]:
    """(the prompt a reply follows, whether it is the template's thinking-off one)."""
    before = _apply(tokenizer, messages[:i], True, tools)
    if has_reasoning(messages[i]):
        return before, False
    quiet = _apply(tokenizer, messages[:i], True, tools, enable_thinking=False)
    if len(quiet) > len(before) and upto.startswith(quiet):
        return quiet, True
    return before, False


def chat_template_kwargs(quiet: int, reasoned: int) -> dict[str, Any]:
    """The template switches a trained run's prompts need at inference to be the ones its
    replies were trained after: a run whose replies all followed Qwen3's thinking-off
    prompt learnt to answer after the empty reasoning block, not to write one, so Chat,
    serving and evaluation render that prompt too (the template's default would ask the
    model to think, which it was never trained to do). Stored in the result's studio.json."""
    return {"enable_thinking": False} if quiet and not reasoned else {}


def _trim(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _without_closing(tokenizer: Any, messages: list[dict], tools: list[dict] | None,
                     text: str, span: tuple[int, int]) -> tuple[int, int]:
    """The span of a conversation's last reply without the eos a template writes after it
    only to close the conversation (Phi-3's `<|end|>\n<|endoftext|>`: a turn that
    follows starts in its place); the reply ends at its end-of-turn token, as in every
    earlier turn. An eos that is the end-of-turn token (ChatML's `<|im_end|>`) stays."""
    eos, (start, end) = getattr(tokenizer, "eos_token", None), span
    if not (eos and end == len(text.rstrip()) and text.endswith(eos, start, end)):
        return span
    cut = _trim(text, start, end - len(eos))
    if cut == end - len(eos):  # right after the reply: its own end-of-turn token
        return span
    try:
        more = _apply(tokenizer, [*messages, {"role": "user", "content": "Go on."}], False,
                      tools)
    except DataError:
        return span
    closing = more.startswith(text[:cut]) and not more.startswith(text[:end])
    return (start, cut) if closing else span


def _tokenize(
    tokenizer: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[bool], list[tuple[int, int]]]:
    """(ids, trained flag per token, character offsets per token)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        # A token straddling a span edge counts as trained: it carries reply text.
        flags = [e > s and any(s < se and e > ss for ss, se in spans) for s, e in offsets]
        return list(enc["input_ids"]), flags, offsets
    # Without offsets, tokenize prompt and reply pieces separately; the first token of a
    # piece carries the piece's text for preview().
    cuts = sorted({0, len(text), *(c for span in spans for c in span)})
    ids: list[int] = []
    flags: list[bool] = []
    offsets: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(cuts):
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        inside = any(ss <= a and b <= se for ss, se in spans)
        ids += piece
        flags += [inside] * len(piece)
        offsets += [(a, b)] + [(b, b)] * (len(piece) - 1)
    return ids, flags, offsets


def encode_conversation(
    tokenizer: Any, messages: list[dict], cutoff_len: int, train_on_prompt: bool = False,
    tools: list[dict] | None = None,
) -> tuple[list[Encoded], Rendered]:
    """A conversation's training samples (see `render`), encoded, and how it was rendered."""
    rendered = render(tokenizer, messages, tools)
    return [_encode(tokenizer, text, spans, cutoff_len, train_on_prompt)
            for text, spans in rendered.samples], rendered


def encode_messages(
    tokenizer: Any, messages: list[dict], cutoff_len: int, train_on_prompt: bool = False,
    tools: list[dict] | None = None,
) -> Encoded:
    """The whole conversation as one sequence, its in-place replies trained: for scoring
    a final reply (evaluation), whose place is always the conversation's end."""
    rendered = render(tokenizer, messages, tools)
    text, spans = rendered.samples[0]
    return _encode(tokenizer, text, spans, cutoff_len, train_on_prompt)


def _encode(tokenizer: Any, text: str, spans: list[tuple[int, int]], cutoff_len: int,
            train_on_prompt: bool) -> Encoded:
    ids, flags, _ = _tokenize(tokenizer, text, spans)
    labels = list(ids) if train_on_prompt else [
        t if f else IGNORE_INDEX for t, f in zip(ids, flags, strict=True)
    ]
    return Encoded(ids[:cutoff_len], labels[:cutoff_len], len(ids), len(ids) > cutoff_len)


def prompt_text(tokenizer: Any, messages: list[dict]) -> str:
    """The conversation rendered up to where the assistant's reply begins."""
    messages, tools, _ = as_rendered(tokenizer, messages)
    return _apply(tokenizer, messages, True, tools)


def preview(
    tokenizer: Any, messages: list[dict], cutoff_len: int, train_on_prompt: bool = False,
    max_chars: int | None = None, tools: list[dict] | None = None,
) -> list[tuple[str, bool | None]]:
    """The text the model sees, as consecutive (segment, trained) pieces, cut where
    cutoff_len cuts the tokens; a conversation trained as several samples (see `render`)
    shows them one after the other, each after a divider piece whose flag is None. With
    `max_chars`, only that many characters of each rendered sample are tokenized (see
    `bounded_lengths`)."""
    segments: list[tuple[str, bool | None]] = []
    samples = render(tokenizer, messages, tools).samples
    for k, (text, spans) in enumerate(samples, 1):
        if k > 1:
            segments.append((SAMPLE_DIVIDER.format(k=k, n=len(samples)), None))
        if max_chars is not None and len(text) > max_chars:
            text = text[:max_chars]
            spans = [(min(a, max_chars), min(b, max_chars)) for a, b in spans]
        _, flags, offsets = _tokenize(tokenizer, text, spans)
        pos = 0
        for (_, end), flag in zip(offsets[:cutoff_len], flags[:cutoff_len], strict=True):
            piece, pos = text[pos:end], max(pos, end)
            trained = flag or train_on_prompt
            if not piece:
                continue
            if segments and segments[-1][1] == trained:
                segments[-1] = (segments[-1][0] + piece, trained)
            else:
                segments.append((piece, trained))
    return segments


def encode_text(tokenizer: Any, texts: Sequence[str], cutoff_len: int) -> list[Encoded]:
    """Pre-training: documents joined with eos, cut into blocks of cutoff_len. The last,
    shorter block is kept: small corpora would otherwise lose a good share of their text."""
    if not texts:
        return []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream += list(ids) + eos
    blocks = (stream[i : i + cutoff_len] for i in range(0, len(stream), cutoff_len))
    # A single token has nothing to predict.
    return [Encoded(b, list(b), len(b), False) for b in blocks if len(b) > 1]


def pack(encoded: list[Encoded], cutoff_len: int) -> list[Encoded]:
    """Best-fit-decreasing packing into sequences of at most cutoff_len tokens.

    Each row carries position_ids that restart at 0 for every packed sample: from them
    transformers builds a block-diagonal causal mask (see core.train.batching), so a packed
    sample attends only to itself and its loss is the loss it has alone. The first token
    of each sample gets no label: alone it has nothing before it to be predicted from.
    """
    bins: list[list[Encoded]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for item in sorted(encoded, key=lambda e: len(e.input_ids), reverse=True):
        n = min(len(item.input_ids), cutoff_len)
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(item)
        else:
            room, b = cutoff_len, len(bins)
            bins.append([item])
        bisect.insort(free, (room - n, b))
    return [_packed_row(group, cutoff_len) for group in bins]


def _packed_row(group: list[Encoded], cutoff_len: int) -> Encoded:
    parts = [(e.input_ids[:cutoff_len], e.labels[:cutoff_len]) for e in group]
    return Encoded(
        input_ids=[t for ids, _ in parts for t in ids],
        labels=[t for _, labels in parts for t in [IGNORE_INDEX, *labels[1:]]],
        length=sum(len(ids) for ids, _ in parts),
        truncated=any(e.truncated for e in group),
        position_ids=[p for ids, _ in parts for p in range(len(ids))],
    )


def token_lengths(examples: list[dict], tokenizer: Any) -> list[int]:
    """Tokens per example as encoded (before cutting), for the Data tab's histogram."""
    return bounded_lengths(examples, tokenizer, None)[0]


def bounded_lengths(examples: list[dict], tokenizer: Any,
                    max_chars: int | None) -> tuple[list[int], list[bool]]:
    """(tokens per example, whether it was measured on its first `max_chars` characters
    only). A preview bounds what it tokenizes by what its cut-off can show: a row of ten
    million characters would otherwise take a minute of tokenizing to show 1024 tokens."""
    texts = [
        _apply(tokenizer, *_with_tools_of(tokenizer, ex)) if "messages" in ex else ex["text"]
        for ex in examples
    ]
    if not texts:
        return [], []
    partial = [max_chars is not None and len(t) > max_chars for t in texts]
    if any(partial):
        texts = [t[:max_chars] for t in texts]
    eos = 1 if tokenizer.eos_token_id is not None else 0
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = [len(i) + (0 if "messages" in ex else eos)
               for i, ex in zip(ids, examples, strict=True)]
    return lengths, partial


def _with_tools_of(tokenizer: Any, example: dict) -> tuple[list[dict], bool, list | None]:
    messages, tools, _ = as_rendered(tokenizer, example["messages"], example.get("tools"))
    return messages, False, tools


def build_datasets(
    cfg: RunConfig, tokenizer: Any
) -> tuple[list[dict], list[dict] | None, dict[str, Any]]:
    """(train items, eval items or None, stats) for a run; items are dicts of
    input_ids, labels and attention_mask lists, unpadded."""
    from core.data.loader import load_for_stage, split_train_eval

    examples = load_for_stage(cfg)
    train_ex, eval_ex = split_train_eval(examples, cfg.seed, cfg.val_size)

    truncated = dropped = 0
    notes: list[str] = []
    template_kwargs: dict[str, Any] = {}
    system = ""
    if cfg.stage == "pt":
        lengths = token_lengths(examples, tokenizer)
        train = encode_text(tokenizer, [_document(e) for e in train_ex], cutoff_len=cfg.cutoff_len)
        evals = encode_text(tokenizer, [_document(e) for e in eval_ex], cutoff_len=cfg.cutoff_len)
    else:
        tokenizer = rendering(tokenizer, cfg.system_prompt)
        (train, evals), notes, template_kwargs = _encode_chats(
            tokenizer, cfg, (train_ex, eval_ex), examples.where)
        system = describe(tokenizer, chat_template(tokenizer), [e["messages"] for e in examples])
        lengths = [e.length for e in train + evals]
        truncated = sum(e.truncated for e in train + evals)
        # A sample cut before its first reply token would only add padding to a batch.
        kept_train = [e for e in train if _trained(e)]
        kept_eval = [e for e in evals if _trained(e)]
        dropped = len(train) + len(evals) - len(kept_train) - len(kept_eval)
        train, evals = kept_train, kept_eval
        if cfg.packing:
            train, evals = pack(train, cfg.cutoff_len), pack(evals, cfg.cutoff_len)

    trained_tokens = sum(_trained(e) for e in train)
    if not train or trained_tokens == 0:
        if dropped:
            why = (f"all {dropped} samples were cut at cutoff_len={cfg.cutoff_len} before any "
                   "reply token; raise the cut-off length")
        else:
            why = "the datasets give no tokens to train on"
        raise DataError(f"nothing to train on: {why}")

    stats = {
        "mix": getattr(examples, "mix", None),
        "num_samples": getattr(examples, "sampled", None),  # registry entries' draws
        "examples": len(examples),
        "train_samples": len(train),
        "eval_samples": len(evals),
        "truncated_samples": truncated,
        "dropped_samples": dropped,
        "max_length": max(lengths, default=0),
        "mean_length": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        "trained_tokens": trained_tokens,
        "packed": bool(cfg.packing and cfg.stage == "sft"),
        "system_prompt": system,  # which one the samples get (core.data.system)
        "notes": notes,  # how the data was rendered (core.train.trainer says them)
        "chat_template_kwargs": template_kwargs,  # kept in the result (core.methods.result)
    }
    return _items(train), (_items(evals) or None), stats


def _encode_chats(tokenizer: Any, cfg: RunConfig, parts: tuple[list[dict], ...],
                  where: Callable[[dict], tuple[str, int] | None] = lambda e: None,
                  ) -> tuple[list[list[Encoded]], list[str], dict[str, Any]]:
    """Each part's conversations as samples, what rendering them folded or split (with
    how many conversations, or replies for those split off, it was) and the template
    switches they were rendered with. A conversation the template refuses is named by
    `where` (its file and row)."""
    counts: dict[str, int] = {}
    out = []
    quiet = reasoned = 0
    for part in parts:
        encoded: list[Encoded] = []
        for e in part:
            try:
                samples, rendered = encode_conversation(tokenizer, e["messages"],
                                                        cfg.cutoff_len, cfg.train_on_prompt,
                                                        e.get("tools"))
            except DataError as exc:
                found = where(e)
                if found is None or exc.row is not None:
                    raise
                raise DataError(f"{exc.reason}; fix this row or leave it out", file=found[0],
                                row=found[1]) from None
            encoded += samples
            quiet, reasoned = quiet + rendered.quiet, reasoned + rendered.reasoned
            for note in rendered.notes:
                counts[note] = counts.get(note, 0) + (rendered.alone if note == NOT_IN_PLACE
                                                      else 1)
        out.append(encoded)
    total = sum(len(part) for part in parts)
    notes = [NOT_IN_PLACE.format(n=n) if note == NOT_IN_PLACE else
             f"{note} ({n} of {total} conversations)" for note, n in counts.items()]
    return out, notes, chat_template_kwargs(quiet, reasoned)


def _trained(e: Encoded) -> int:
    return sum(label != IGNORE_INDEX for label in e.labels)


def _document(example: dict) -> str:
    # Chat data in a pre-training run: its texts, one paragraph per message.
    if "text" in example:
        return example["text"]
    return "\n\n".join(m["content"] for m in example["messages"])


def _items(encoded: list[Encoded]) -> list[dict[str, list[int]]]:
    # Packed rows carry positions instead of an attention mask (see core.train.batching).
    return [
        {"input_ids": e.input_ids, "labels": e.labels, "position_ids": e.position_ids}
        if e.position_ids is not None else
        {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
        for e in encoded
    ]
