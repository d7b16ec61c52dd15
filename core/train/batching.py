"""How samples become batches: the `batching` setting, and packed rows.

padded        pad each batch to its longest sample (the plain recipe)
grouped       batches of similar lengths: sorted within random mega-batches (transformers'
              get_length_grouped_indices), so the order stays random while a batch holds
              little padding. Its LengthGroupedSampler is not used as is: its rule (at
              least 4 mega-batches) makes a mega-batch one batch for sets under 32 batches,
              i.e. no grouping at all for the bundled `identity` (52 samples, 21% padding
              at batch 8); mega-batches of at least 4 batches bring that to 13%
padding_free  the batch as one row, positions restarting at each sample, no padding
              (DataCollatorWithFlattening). With flash-attention this is variable-length
              attention; with sdpa/eager on CPU transformers builds a dense block-diagonal
              mask instead, which measured slower than padding, so `auto` picks it only
              where flash-attention is installed
packed        rows made by core.data.encode.pack (the `packing` setting): like padding-free,
              positions restart at every packed sample so attention stays inside it

Restarting positions are how transformers (masking_utils.find_packed_sequence_indices)
learns the sample boundaries: it builds the block-diagonal mask from position_ids when
no attention mask is passed and no KV cache exists, so these batches carry no
attention_mask and use_cache=False. Methods that prepend virtual tokens (prompt
learning) need the attention mask, so they always pad.
"""

from __future__ import annotations

from typing import Any

CHOICES = ("auto", "padded", "grouped", "padding_free")


class PackingError(ValueError):
    """The run asks for a batching its method cannot use."""


def prompt_learning(model: Any) -> bool:
    """Whether `model` prepends trainable virtual tokens (peft prompt learning)."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    return bool(getattr(config, "is_prompt_learning", False))


def choose(cfg: Any, model: Any, flash_attention: bool) -> str:
    """The batching this run uses: packed, padded, grouped or padding_free."""
    virtual_tokens = prompt_learning(model)
    if cfg.packing and cfg.stage == "sft":
        if virtual_tokens:
            raise PackingError(
                f"packing is not available with method {cfg.method!r}: its virtual tokens "
                "are put before the whole row, so packed samples cannot be kept apart; "
                "turn packing off")
        return "packed"
    choice = getattr(cfg, "batching", "auto")
    if virtual_tokens and choice == "padding_free":
        return "grouped"
    if choice != "auto":
        return choice
    # Not grouped by default: it changes which samples share a batch, and on `sentiment`
    # (length correlates with the label) the held-out loss after 6 steps came out 33%
    # higher than with random batches, for a few % fewer tokens. Padding-free batches
    # keep the random batches and drop all padding.
    return "padding_free" if flash_attention and not virtual_tokens else "padded"


def mega_batch_mult(samples: int, batch_size: int) -> int:
    """Batches per mega-batch: transformers' rule (4 mega-batches, at most 50 batches
    each), but at least 4 batches (or all there are)."""
    batches = -(-samples // batch_size)
    return max(min(4, batches), min(samples // (batch_size * 4), 50), 1)


def grouped_sampler(lengths: list[int], batch_size: int) -> Any:
    """A sampler of length-grouped indices, reshuffled each epoch from torch's global
    generator (which the Trainer seeds), like transformers' LengthGroupedSampler."""
    from torch.utils.data import Sampler
    from transformers.trainer_pt_utils import get_length_grouped_indices

    mult = mega_batch_mult(len(lengths), batch_size)

    class GroupedSampler(Sampler):
        def __len__(self) -> int:
            return len(lengths)

        def __iter__(self):
            return iter(get_length_grouped_indices(lengths, batch_size, mult))

    return GroupedSampler()


def collator(batching: str, tokenizer: Any, flash_attention: bool = False) -> Any:
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if batching == "packed":
        return PackedCollator(_pad_id(tokenizer))
    if batching == "padding_free":
        flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_attention)
        return lambda features: {**flatten(features), "use_cache": False}
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


class PackedCollator:
    """Packed rows padded to the longest in the batch. The padding gets its own
    restarting positions (a segment of its own that nothing attends to from outside)
    and no labels, so it changes no sample's loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, labels, positions = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(f["labels"]) + [-100] * pad)
            positions.append(list(f["position_ids"]) + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "use_cache": False,
        }
