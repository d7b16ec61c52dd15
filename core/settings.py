"""The one description of a run setting.

Every setting of a run is a `Setting`: its name, default, bounds, help text, group and the
methods it applies to. The YAML file, the CLI flags, the UI widgets and validation are all
derived from these objects (see `core.config`), so a setting is never spelled out twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Groups, in the order the UI shows them. "basic" settings are always in view.
GROUPS: dict[str, tuple[str, str]] = {
    "model": ("Model", "模型"),
    "method": ("Method settings", "方法参数"),
    "quantization": ("Quantization", "量化"),
    "data": ("Data", "数据"),
    "train": ("Training", "训练"),
    "schedule": ("Optimizer and schedule", "优化器与学习率"),
    "preference": ("Preference tuning", "偏好训练"),
    "logging": ("Logging, evaluation and checkpoints", "日志、评估与检查点"),
    "output": ("Output", "输出"),
}


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    group: str
    label: str = ""
    label_zh: str = ""
    help_zh: str = ""  # the help text in the UI's Chinese mode
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    # Methods this setting applies to; None means every method.
    methods: tuple[str, ...] | None = None
    # Training stages this setting applies to (dpo, kto, ...); None means every stage.
    stages: tuple[str, ...] | None = None
    # Shown in a collapsed "advanced" area of its group.
    advanced: bool = False
    # For list settings: the element type. Lists are written as YAML lists and as
    # space-separated CLI values.
    item_type: type | None = None
    # For str settings where free text is allowed beside suggested choices.
    allow_custom: bool = False

    @property
    def kind(self) -> type:
        if self.item_type is not None:
            return list
        return type(self.default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def applies_to(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def applies_to_stage(self, stage: str) -> bool:
        return self.stages is None or stage in self.stages

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Coerce `value` to this setting's type; return (value, error or None)."""
        kind = self.kind
        try:
            if kind is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low in ("true", "yes", "1", "on"):
                        value = True
                    elif low in ("false", "no", "0", "off"):
                        value = False
                    else:
                        return value, f"expected true or false, got {value!r}"
                elif not isinstance(value, bool):
                    return value, f"expected true or false, got {value!r}"
            elif kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    return value, f"expected a whole number, got {value!r}"
                value = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    return value, f"expected a number, got {value!r}"
                value = float(value)
            elif kind is list:
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, (list, tuple)):
                    return value, f"expected a list, got {value!r}"
                value = [self.item_type(v) for v in value]
            elif kind is str:
                if value is None:
                    value = ""
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    return value, f"expected text, got {value!r}"
                value = str(value)
        except (TypeError, ValueError):
            return value, f"expected {kind.__name__}, got {value!r}"
        if self.choices is not None and not self.allow_custom:
            items = value if kind is list else [value]
            bad = [v for v in items if v not in self.choices]
            if bad:
                allowed = ", ".join(str(c) for c in self.choices)
                return value, f"{bad[0]!r} is not one of: {allowed}"
        if kind in (int, float):
            if self.minimum is not None and value < self.minimum:
                return value, f"must be at least {self.minimum:g}, got {value:g}"
            if self.maximum is not None and value > self.maximum:
                return value, f"must be at most {self.maximum:g}, got {value:g}"
        return value, None
