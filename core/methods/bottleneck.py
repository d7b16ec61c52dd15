"""Houlsby bottleneck adapters (Houlsby et al., 2019, "Parameter-Efficient Transfer
Learning for NLP"), which peft does not implement.

An adapter sits on the output h of a frozen layer and adds a small residual branch:

    h  ->  h + up(act(down(h)))

`down` projects the hidden size to the bottleneck, `up` projects back and starts at zero,
so a freshly inserted adapter is exactly the identity and training starts from the base
model. Adapters go after each decoder layer's attention output projection and/or its
feed-forward output projection (self_attn.o_proj and mlp.down_proj in Llama-like models),
i.e. before the residual addition, as in the paper.

A saved adapter is a self-describing folder: adapter_config.json (sizes, placement,
activation and the exact module names) and adapter_model.safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "peft-studio-bottleneck-adapter"

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}

# Name endings of the output projections, by placement: Llama/Mistral/Qwen/Gemma first,
# then other common families (GPT-NeoX, Falcon, Phi, OPT, GPT-2).
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "attention": ("self_attn.o_proj", "attention.dense", "self_attention.dense",
                  "self_attn.dense", "self_attn.out_proj", "attn.c_proj"),
    "ffn": ("mlp.down_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.c_proj"),
}


class Bottleneck(nn.Module):
    """h + up(act(down(h))), with `up` initialised to zero."""

    def __init__(self, dim: int, size: int, activation: str):
        super().__init__()
        self.activation = activation
        self.down = nn.Linear(dim, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class AdaptedLayer(nn.Module):
    """A frozen layer followed by a bottleneck adapter on its output. The adapter keeps
    its own dtype (float32) and the output returns in the layer's dtype."""

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(*args, **kwargs)
        return self.adapter(out.to(self.adapter.up.weight.dtype)).to(out.dtype)


def find_targets(model: nn.Module, placement: str) -> list[str]:
    """Names of the layers whose outputs get an adapter, in model order."""
    endings = PLACEMENTS["attention"] + PLACEMENTS["ffn"] if placement == "both" \
        else PLACEMENTS[placement]
    return [
        name for name, module in model.named_modules()
        if not isinstance(module, AdaptedLayer) and _out_features(module) is not None
        and any(name.endswith("." + e) for e in endings)
    ]


def _out_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    return getattr(module, "nf", None)  # GPT-2's Conv1D


def mark_trainable(model: nn.Module) -> None:
    """Freeze everything but the adapters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, AdaptedLayer):
            m.adapter.requires_grad_(True)


def insert(model: nn.Module, size: int, placement: str, activation: str,
           names: list[str] | None = None) -> list[str]:
    """Wrap the target layers (or exactly `names`) with fresh adapters; return the names."""
    if names is None:
        names = find_targets(model, placement)
    if not names:
        endings = ", ".join(PLACEMENTS["attention"] + PLACEMENTS["ffn"])
        raise ValueError(f"adapter: no layer of this model matches the {placement!r} "
                         f"placement (looked for names ending in {endings})")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        dim = _out_features(layer)
        if dim is None:
            raise ValueError(f"adapter: {name} is not a linear layer")
        device = next(layer.parameters()).device
        adapter = Bottleneck(dim, size, activation).to(device=device, dtype=torch.float32)
        setattr(parent, child, AdaptedLayer(layer, adapter))
    return names


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.adapter.{key}": value.detach().contiguous()
        for name, module in model.named_modules() if isinstance(module, AdaptedLayer)
        for key, value in module.adapter.state_dict().items()
    }


def wrapped_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, AdaptedLayer)]


def describe(model: nn.Module) -> dict[str, Any]:
    """The adapter_config.json of the adapters in `model`."""
    names = wrapped_names(model)
    if not names:
        raise ValueError("this model has no bottleneck adapters to save")
    first: Bottleneck = model.get_submodule(names[0]).adapter
    kinds = {p for name in names for p, ends in PLACEMENTS.items()
             if any(name.endswith("." + e) for e in ends)}
    return {
        "format": FORMAT,
        "version": 1,
        "bottleneck_size": first.down.out_features,
        "placement": kinds.pop() if len(kinds) == 1 else "both",
        "activation": first.activation,
        "modules": names,
    }


def save(model: nn.Module, out_dir: Path) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    config = describe(model)
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tensors = {k: v.cpu() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})


def load(model: nn.Module, out_dir: Path) -> nn.Module:
    """Insert the adapters described in `out_dir` into `model` and load their weights."""
    from safetensors.torch import load_file

    config = json.loads((out_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ValueError(f"{out_dir / CONFIG_NAME} is not a bottleneck adapter of PEFT Studio")
    insert(model, config["bottleneck_size"], config["placement"], config["activation"],
           names=config["modules"])
    tensors = load_file(str(out_dir / WEIGHTS_NAME))
    for name in config["modules"]:
        layer = model.get_submodule(name)
        prefix = f"{name}.adapter."
        layer.adapter.load_state_dict(
            {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
    return model
