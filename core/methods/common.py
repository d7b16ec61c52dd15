"""What the methods share: the virtual-token setting of the prompt-learning methods, and
what a model offers a method (its linear layers as targets, its parameter counts)."""

from __future__ import annotations

from typing import Any

from core.schema.setting import Setting

# Shared by the prompt-learning methods (prefix, prompt, ptuning): one setting, one widget.
NUM_VIRTUAL_TOKENS = Setting(
    "num_virtual_tokens", 16, "How many trainable virtual tokens are put before every "
    "input. More learns more; prompt and P-tuning tokens also take room in the context.",
    "method", label="Virtual tokens", label_zh="虚拟词元数", minimum=1, maximum=512,
    help_zh="放在每个输入前的可训练虚拟 token 数。越多学得越多；提示微调和 P-tuning 的 token "
            "也会占用上下文长度。",
)


# -- parameters --------------------------------------------------------------------------
def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters. Tied weights count once; a bitsandbytes 4-bit
    weight counts as the number of weights it stores, not its packed bytes."""
    if hasattr(model, "get_nb_trainable_parameters"):  # a peft model: its own counts
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2 * (p.quant_storage.itemsize if hasattr(p, "quant_storage") else 1)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def target_candidates(model: Any) -> list[str]:
    """Distinct leaf names of the model's linear layers (q_proj, v_proj, ...), in model
    order, without lm_head: the choices for a target-module picker. A layer already
    wrapped by a method (peft's or ours, both keep it as `base_layer`) is listed under
    its own name; the method's inner layers are not listed."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers; peft takes them

    wrappers = [name for name, m in model.named_modules()
                if name and isinstance(getattr(m, "base_layer", None), nn.Module)]
    names: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | Conv1D):
            continue
        inside = next((w for w in wrappers if name.startswith(w + ".")), None)
        if inside is not None:
            if name != inside + ".base_layer":
                continue  # lora_A, an adapter's down/up, ...
            name = inside
        leaf = name.rsplit(".", 1)[-1]
        if leaf != "lm_head" and leaf not in names:
            names.append(leaf)
    return names
