"""The one description of a run setting.

Every setting of a run is a `Setting`: its name, default, bounds, help text, group and the
methods it applies to. The YAML file, the CLI flags, the UI widgets and validation are all
derived from these objects (see `core.schema.config`), so a setting is never spelled out twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    "devices": ("Devices: several GPUs and machines", "设备：多 GPU 与多机"),
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
                if not math.isfinite(value):
                    # NaN passes every bound check (all comparisons are False)
                    return value, f"expected a finite number, got {value!r}"
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
        except (TypeError, ValueError, OverflowError):
            return value, f"expected {kind.__name__}, got {value!r}"
        if self.choices is not None and not self.allow_custom:
            items = value if kind is list else [value]
            bad = [v for v in items if v not in self.choices]
            if bad:
                allowed = ", ".join(str(c) for c in self.choices)
                return value, f"{bad[0]!r} is not one of: {allowed}"
        if kind in (int, float):
            if self.minimum is not None and value < self.minimum:
                return value, f"must be at least {_number(self.minimum)}, got {_number(value)}"
            if self.maximum is not None and value > self.maximum:
                return value, f"must be at most {_number(self.maximum)}, got {_number(value)}"
        return value, None


def _number(x: float) -> str:
    """4096, 10000000, 0.001: whole numbers in full (1e+07 reads like a typo), others as %g."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e21 else f"{x:g}"


class SettingsError(ValueError):
    """Bad values for a group of settings, one "name: what is wrong" per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def check_fields(obj: Any, settings: Iterable[Setting]) -> None:
    """Check and coerce the attributes of a dataclass named after `settings` in place
    (its __post_init__ calls this); raise SettingsError naming every bad one."""
    problems = []
    for s in settings:
        value, error = s.check(getattr(obj, s.name))
        if error:
            problems.append(f"{s.name}: {error}")
        else:
            object.__setattr__(obj, s.name, value)
    if problems:
        raise SettingsError(problems)


def by_name(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


def add_flags(parser: Any, settings: Iterable[Setting]) -> None:
    """One argparse flag per setting of a job (chat, evaluation, export), named after it,
    typed, bounded by choices, with the setting's default; the job's spec checks the
    values against the settings' bounds (check_fields)."""
    import argparse

    for s in settings:
        kwargs: dict[str, Any] = {"default": s.default, "dest": s.name,
                                  "help": f"{s.help} (default: {s.default})".replace("%", "%%")}
        if s.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = s.kind
            if s.choices and not s.allow_custom:
                kwargs["choices"] = s.choices
        parser.add_argument(s.flag, **kwargs)
