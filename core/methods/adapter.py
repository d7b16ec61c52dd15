"""Bottleneck adapters (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for
NLP"), which peft does not implement: the method's declaration, its torch modules, and
how it wraps, saves and loads a model.

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

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core.methods import Method
from core.schema.setting import Setting as S

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "peft-studio-bottleneck-adapter"
ACTIVATIONS = ("relu", "gelu", "silu")

# Name endings of the output projections, by placement: Llama/Mistral/Qwen/Gemma first,
# then other common families (GPT-NeoX, Falcon, Phi, OPT, GPT-2).
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "attention": ("self_attn.o_proj", "attention.dense", "self_attention.dense",
                  "self_attn.dense", "self_attn.out_proj", "attn.c_proj"),
    "ffn": ("mlp.down_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.c_proj"),
}


@functools.cache
def layers() -> SimpleNamespace:
    """The adapter's torch modules, defined on first use: the web UI reads this method's
    declaration at start-up and must not import torch."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        """h + up(act(down(h))), with `up` initialised to zero."""

        def __init__(self, dim: int, size: int, activation: str):
            super().__init__()
            self.activation = activation
            self.down = nn.Linear(dim, size)
            self.act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[activation]()
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

    return SimpleNamespace(Bottleneck=Bottleneck, AdaptedLayer=AdaptedLayer, Linear=nn.Linear)


def find_targets(model: Any, placement: str) -> list[str]:
    """Names of the layers whose outputs get an adapter, in model order."""
    endings = PLACEMENTS["attention"] + PLACEMENTS["ffn"] if placement == "both" \
        else PLACEMENTS[placement]
    return [
        name for name, module in model.named_modules()
        if not isinstance(module, layers().AdaptedLayer) and _out_features(module) is not None
        and any(name.endswith("." + e) for e in endings)
    ]


def _out_features(module: Any) -> int | None:
    if isinstance(module, layers().Linear):
        return module.out_features
    return getattr(module, "nf", None)  # GPT-2's Conv1D


def insert(model: Any, size: int, placement: str, activation: str,
           names: list[str] | None = None) -> list[str]:
    """Wrap the target layers (or exactly `names`) with fresh adapters; return the names."""
    import torch

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
        adapter = layers().Bottleneck(dim, size, activation).to(device=device,
                                                                dtype=torch.float32)
        setattr(parent, child, layers().AdaptedLayer(layer, adapter))
    return names


def wrapped_names(model: Any) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, layers().AdaptedLayer)]


def describe(model: Any) -> dict[str, Any]:
    """The adapter_config.json of the adapters in `model`."""
    names = wrapped_names(model)
    if not names:
        raise ValueError("this model has no bottleneck adapters to save")
    first = model.get_submodule(names[0]).adapter
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


def experts_note(model: Any, placement: str) -> str | None:
    """Why a mixture-of-experts model gets no feed-forward adapters: its feed-forward
    block is experts and a router, with no one output projection to follow (None on a
    dense model or with placement `attention`); `ffn` alone there is refused."""
    moe = next((name for name, _ in model.named_modules() if name.endswith("mlp.experts")),
               None)
    if moe is None or placement == "attention":
        return None
    why = (f"this model's feed-forward layers are mixtures of experts ({moe.rpartition('.')[0]}"
           ": experts and a router, no single output projection to put an adapter after)")
    if placement == "ffn":
        raise ValueError(f"adapter_placement ffn: {why}; choose attention (or both, which "
                         "puts adapters after attention here)")
    return f"adapter_placement both -> attention: {why}, so adapters go after attention only"


class BottleneckAdapter(Method):
    def wrap(self, model: Any, cfg: Any) -> Any:
        note = experts_note(model, cfg.adapter_placement)
        insert(model, cfg.adapter_size, cfg.adapter_placement, cfg.adapter_activation)
        model.studio_notes = [note] if note else []  # said in the start event
        for p in model.parameters():  # everything but the adapters is frozen
            p.requires_grad_(False)
        for name in wrapped_names(model):
            model.get_submodule(name).adapter.requires_grad_(True)
        return model

    def save(self, model: Any, out_dir: Path, cfg: Any = None,
             state_dict: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = describe(model)
        (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n",
                                           encoding="utf-8")
        if state_dict is None:
            state_dict = {f"{name}.adapter.{key}": value
                          for name in config["modules"]
                          for key, value in model.get_submodule(name).adapter.state_dict().items()}
        prefixes = tuple(f"{name}.adapter." for name in config["modules"])
        tensors = {key: value.detach().contiguous().cpu()
                   for key, value in state_dict.items() if key.startswith(prefixes)}
        if not tensors:
            raise ValueError("the gathered weights hold none of the bottleneck adapters")
        save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})

    def load(self, base_model: Any, out_dir: Path, cfg: Any = None) -> Any:
        """Insert the adapters described in `out_dir` and load their weights, frozen (for
        use, like a loaded peft adapter)."""
        from safetensors.torch import load_file

        out_dir = Path(out_dir)
        config = json.loads((out_dir / CONFIG_NAME).read_text(encoding="utf-8"))
        if config.get("format") != FORMAT:
            raise ValueError(f"{out_dir / CONFIG_NAME} is not a bottleneck adapter of "
                             "PEFT Studio")
        insert(base_model, config["bottleneck_size"], config["placement"],
               config["activation"], names=config["modules"])
        tensors = load_file(str(out_dir / WEIGHTS_NAME))
        for name in config["modules"]:
            prefix = f"{name}.adapter."
            base_model.get_submodule(name).adapter.load_state_dict(
                {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        for p in base_model.parameters():
            p.requires_grad_(False)
        return base_model


METHOD = BottleneckAdapter(
    id="adapter",
    label="Bottleneck adapter (Houlsby)",
    label_zh="瓶颈适配器（Houlsby Adapter）",
    help="Adds a small bottleneck network (down-projection, activation, up-projection, "
    "residual) after each layer's attention and/or feed-forward output; the base stays "
    "frozen and the model starts out unchanged. The classic adapter; LoRA is usually as "
    "good and merges, adapters add a little inference time.",
    help_zh="在每层的注意力和/或前馈输出之后加入一个小的瓶颈网络（降维、激活、升维、残差）；基础"
            "模型冻结，训练开始时模型完全不变。经典的适配器方法；LoRA 通常同样好且可合并，适配器"
            "会略增推理时间。",
    not_mergeable_reason="An adapter has a non-linearity (its activation) between its two "
    "projections, so it cannot be folded into the base weights; it is exported as an "
    "adapter folder.",
    settings=(
        S("adapter_size", 64, "Width of the bottleneck: larger learns more and costs more.",
          "method", label="Bottleneck size", label_zh="瓶颈维度", minimum=1, maximum=16384,
          help_zh="瓶颈的宽度：越大学得越多，开销也越大。"),
        S("adapter_placement", "both", "Where adapters go in each decoder layer: after the "
          "attention output, after the feed-forward output, or both (the paper's choice).",
          "method", label="Placement", label_zh="插入位置",
          choices=("attention", "ffn", "both"),
          help_zh="适配器在每个解码层中的位置：注意力输出之后、前馈输出之后，或两处都放（论文的"
                  "做法）。"),
        S("adapter_activation", "gelu", "The non-linearity inside the bottleneck.",
          "method", label="Activation", label_zh="激活函数",
          choices=ACTIVATIONS, advanced=True,
          help_zh="瓶颈内部的非线性激活函数。"),
    ),
    position=6,
)
