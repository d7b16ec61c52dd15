"""The training loss computed only at the positions that carry a label.

A causal LM's forward applies the output projection (lm_head) and, in the loss, a softmax
over the whole vocabulary (49,152 tokens for SmolLM2) at every position of the padded
batch, although only the assistant's reply tokens have labels: about 4% of the tokens of
the bundled `sentiment` set. Here the decoder runs as usual, its hidden states are
gathered at the labelled positions, and lm_head + cross-entropy run on those alone, in
chunks so memory stays flat however many tokens are labelled.

Why our own: no library offers this for every method on CPU (Liger's fused linear
cross-entropy is CUDA/Triton-only; see core.gpu_kernels for that path), and the change is
small once the Trainer hands us the batch.

The loss is the one transformers computes (ForCausalLMLoss): the summed token losses
divided by `num_items_in_batch`, the labelled-token count over all gradient-accumulation
micro-batches, so the Trainer treats it as already scaled for accumulation, exactly as it
does the model's own loss. Tied embeddings get their gradient through lm_head as before.

Methods that prepend virtual tokens (peft's prompt learning) and architectures whose
logits are post-processed (soft-capping, scaling) keep the plain path.
"""

from __future__ import annotations

from typing import Any

from core.train import shared_prefix

IGNORE_INDEX = -100
# Labelled positions per lm_head + cross-entropy chunk: 4096 x 49,152 float32 logits is
# 800 MB, the most we let one chunk hold at a time.
CHUNK = 4096
# Config fields that change logits after lm_head in some architectures (Gemma 2, Cohere,
# Granite, ...): such models keep the plain path.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                         "output_multiplier_scale")
# Batch keys the loss needs but the decoder must not see.
_LOSS_KEYS = ("labels", "shift_labels", "num_items_in_batch", "use_cache")


def causal_lm(model: Any) -> Any | None:
    """The transformers causal LM inside `model` (unwrapped from peft) when its loss can
    be computed at labelled positions only, else None (use the model's own forward)."""
    from torch import nn

    inner = model
    if hasattr(inner, "peft_config"):
        config = inner.peft_config.get(getattr(inner, "active_adapter", None))
        if config is None or getattr(config, "is_prompt_learning", False):
            return None
        inner = inner.get_base_model()
    decoder = getattr(inner, "model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module):
        return None
    config = getattr(inner, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return None
    for name in _LOGIT_POSTPROCESSING:
        if getattr(config, name, None) not in (None, 1, 1.0):
            return None
    return inner


def labelled_loss(lm: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                  share_prefix: bool = False) -> Any:
    """ForCausalLMLoss of `lm` on `inputs`, computing logits at labelled positions only;
    with `share_prefix`, the tokens every row starts with run once (core.train.shared_prefix)."""
    import torch

    decoder_inputs = {k: v for k, v in inputs.items() if k not in _LOSS_KEYS}
    if "shift_labels" in inputs:  # padding-free collators shift for us
        targets = inputs["shift_labels"]
    else:
        targets = torch.nn.functional.pad(inputs["labels"], (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = targets != IGNORE_INDEX
    shared = shared_prefix.prefix_length(decoder_inputs, keep) if share_prefix else 0
    if shared:
        hidden = shared_prefix.decode(lm.model, decoder_inputs, shared)
        targets, keep = targets[:, shared:], keep[:, shared:]
    else:
        out = lm.model(**decoder_inputs, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    total = chunked_cross_entropy(lm.get_output_embeddings(), hidden[keep], targets[keep])
    if num_items_in_batch is None:
        return total / keep.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def chunked_cross_entropy(head: Any, hidden: Any, targets: Any) -> Any:
    """Summed cross-entropy of head(hidden) against targets. With more than one chunk,
    each chunk's logits are recomputed in the backward pass rather than kept, so only
    one chunk of logits is alive at a time."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def piece(h: Any, t: Any) -> Any:
        logits = head(h).float()
        return torch.nn.functional.cross_entropy(logits, t, reduction="sum")

    if hidden.shape[0] <= CHUNK:
        return piece(hidden, targets) if hidden.shape[0] else hidden.sum() * 0.0
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], CHUNK):
        h, t = hidden[start:start + CHUNK], targets[start:start + CHUNK]
        total = total + checkpoint(piece, h, t, use_reentrant=False)
    return total


def trainer_class(fast: bool, share_prefix: bool = False) -> type:
    """transformers' Trainer, with (when `fast`) the training loss computed at labelled
    positions only where the model allows it, and (when `share_prefix`) each batch's
    common start run once; evaluation (which wants logits) keeps the plain path."""
    from transformers import Trainer

    class StudioTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            unwrapped = self.accelerator.unwrap_model(model)
            # Under DDP/FSDP the wrapper's forward does the gradient bookkeeping, so a
            # wrapped model keeps the plain path.
            lm = causal_lm(unwrapped) if fast and unwrapped is model else None
            if return_outputs or lm is None or "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = labelled_loss(lm, inputs, num_items_in_batch, share_prefix)
            # As Trainer.compute_loss does, so multi-process runs average the same way.
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return loss

        def _get_train_sampler(self, train_dataset=None):
            from core.train import batching

            dataset = self.train_dataset if train_dataset is None else train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
                return super()._get_train_sampler(train_dataset)
            size = self.args.train_batch_size * self.args.gradient_accumulation_steps
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return batching.grouped_sampler(lengths, size)

        def _track_num_input_tokens(self, inputs):
            # Padding-free and packed batches have no attention mask to count real tokens
            # by (and the base class warns on every step): count their input ids, which
            # for packed rows includes the little padding of the shorter rows.
            if "attention_mask" not in inputs and "position_ids" in inputs \
                    and self.args.include_num_input_tokens_seen == "non_padding":
                tokens = inputs["input_ids"].numel()
                self.state.num_input_tokens_seen += int(tokens) * self.accelerator.num_processes
                return None
            return super()._track_num_input_tokens(inputs)

    return StudioTrainer
