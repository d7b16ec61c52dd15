"""The Train tab's actions as plain functions of setting values (a {setting: value} dict),
so tests call them without a browser: start, abort, count parameters, preview the command,
save and load settings as YAML files and named presets."""

from __future__ import annotations

import json
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.jobs import runner
from core.jobs.device import BusyError
from core.jobs.runs import CONFIG, RUNNING, run_status
from core.paths import saves_dir
from core.schema.config import SETTINGS, ConfigError, RunConfig
from webui import guard, probe
from webui.i18n import Text
from webui.widgets import config_values, from_config, to_config

PRESET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

PROBLEMS = Text("**Cannot start: {n} problem(s) in the settings**",
                "**无法开始：设置中有 {n} 个问题**")
STARTED = Text("Started run **{name}**.", "已开始运行 **{name}**。")
BUSY = Text("⚠ {error}", "⚠ {error}")
ABORTING = Text("Stopping **{name}**: it finishes the current step and saves what it has "
                "trained.", "正在停止 **{name}**：完成当前步骤后保存已训练的结果。")
OTHER_MACHINES = Text("Now start each other machine with the same settings: copy this "
                      "config.yaml to the same path there (the model and datasets too) and run:",
                      "现在用相同设置启动其他每台机器：把这个 config.yaml 复制到那台机器的相同路径"
                      "（模型和数据集也要在），然后运行：")
BAD_DATA = Text("**Cannot start: a dataset cannot train as it is** (`peft-studio data check "
                "NAME` prints the same)", "**无法开始：数据集无法按现状训练**（`peft-studio data "
                "check 名称` 输出相同内容）")
NOTHING_TO_ABORT = Text("No run is training.", "当前没有正在训练的运行。")
PICK_ONE = Text("Pick one stopped run in **Show runs** to resume it.",
                "请在 **查看运行** 中选一个已停止的运行以继续训练。")
RESUMED = Text("Resumed run **{name}** from step {step}.", "已从第 {step} 步继续运行 **{name}**。")


@dataclass
class Started:
    run_dir: Path | None
    message: str


def problems_markdown(exc: ConfigError, lang: str = "en") -> str:
    items = "\n".join(f"- `{p.split(':', 1)[0]}`:{p.split(':', 1)[1]}" if ":" in p else f"- {p}"
                      for p in exc.problems)
    return f"{PROBLEMS(lang, n=len(exc.problems))}\n\n{items}"


def start(values: dict[str, Any], lang: str = "en") -> Started:
    """Validate and start a run; on bad settings nothing starts and every problem is
    listed."""
    try:
        cfg = to_config(values)
    except ConfigError as exc:
        return Started(None, problems_markdown(exc, lang))
    from core.data.registry import dataset_problems

    # Said here rather than by a trainer that starts and fails (as the CLI does); the
    # registry's own problems only where the run names an entry concerned.
    missing = dataset_problems(cfg.dataset)
    if missing:
        return Started(None, problems_markdown(ConfigError(missing), lang))
    from core.data.check import before_training

    # Every row, as `peft-studio train` checks them: a bad file leaves no failed run.
    bad = before_training(cfg.dataset, cfg.stage)
    if bad:
        return Started(None, BAD_DATA(lang) + "\n\n" + "\n".join(f"- {line}" for line in bad))
    from core import distributed

    try:
        run_dir = runner.start(cfg)
    except BusyError as exc:
        return Started(None, BUSY(lang, error=exc))
    except ConfigError as exc:  # what this machine lacks (GPUs, DeepSpeed)
        return Started(None, problems_markdown(exc, lang))
    message = STARTED(lang, name=run_dir.name)
    others = distributed.node_commands(cfg, run_dir / CONFIG)
    if others:
        steps = "\n".join(f"- machine {k}: `{line}`" for k, line in enumerate(others, start=1))
        message += "\n\n" + OTHER_MACHINES(lang) + "\n" + steps
    return Started(run_dir, message)


def abort(run_dir: str | Path | None, lang: str = "en") -> str:
    """Ask the run to stop, in a background thread: runner.abort waits for the trainer
    to save (up to a minute) and the UI must stay responsive meanwhile."""
    if not run_dir or run_status(Path(run_dir))[0] != RUNNING:
        return NOTHING_TO_ABORT(lang)
    threading.Thread(target=runner.abort, args=(Path(run_dir),), daemon=True).start()
    return ABORTING(lang, name=Path(run_dir).name)


def resume(selected: list[str], lang: str = "en") -> Started:
    """Resume the one picked run from its newest resume point (core.jobs.resume), with its
    settings as they were: only a run in saves/."""
    from core.jobs.resume import resume as resume_run

    if len(selected) != 1:
        return Started(None, PICK_ONE(lang))
    try:
        run_dir = guard.existing_run(selected[0])
        event = resume_run(run_dir)
    except (ValueError, BusyError) as exc:
        return Started(None, BUSY(lang, error=exc))
    return Started(run_dir, RESUMED(lang, name=run_dir.name, step=event["step"]))


# -- parameters ---------------------------------------------------------------------------
def inspect_payload(values: dict[str, Any]) -> dict[str, Any]:
    """The settings a parameter count depends on: the model and the method's own. Other
    settings (data, schedule) are left out so that the probe's cache keeps hitting."""
    usable = config_values(values)
    keep = {"model", "method", "trust_remote_code"}
    payload = {k: v for k, v in usable.items() if k in keep or SETTINGS[k].group == "method"}
    RunConfig(**payload)  # raises ConfigError listing every problem
    if payload.get("trust_remote_code") and not guard.POLICY.allow_remote_code:
        raise ConfigError(["trust_remote_code: " + guard.REMOTE_CODE_NOTE])
    refused = guard.browser_model_problem(payload.get("model"))
    if refused:
        raise ConfigError([f"model: {refused}"])
    return payload


def count_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """{"trainable", "total", "share", "targets", "model_type"} from the probe; raises
    ConfigError or probe.ProbeError."""
    result = dict(probe.ask("inspect", inspect_payload(values)))
    result["share"] = result["trainable"] / result["total"] if result["total"] else 0.0
    return result


def memory_markdown(values: dict[str, Any], result: dict[str, Any]) -> str:
    """The estimate of memory per device for these settings, judged against each device
    of this machine (from the probe's answer; no torch here)."""
    from core import distributed
    from core.train import memory_estimate

    settings = {**{n: s.default for n, s in SETTINGS.items()}, **config_values(values)}
    gpus = [d for d in result.get("devices", []) if d.get("kind") == "gpu"]
    chosen = distributed.device_list(str(settings.get("devices") or "")) or []
    if chosen:
        gpus = [d for i, d in enumerate(gpus) if i in chosen]
    n = distributed.processes(settings, len(gpus))
    per, share, why = dataset_lengths(settings)
    lengths, drawn = as_drawn(settings, per)
    est = memory_estimate.estimate(result, settings, on_gpu=bool(gpus), processes=n,
                                   bf16=bool(result.get("bf16")), lengths=lengths,
                                   trained_share=share)
    devices = gpus[:n] if gpus else result.get("devices", [])
    tokens = memory_estimate.peak_tokens(settings, lengths)
    basis = (f"\n\nActivations for the largest batch of the data chosen: {tokens:,} "
             f"positions ({len(lengths):,} samples, the longest "
             f"{min(max(lengths), int(settings['cutoff_len'])):,} tokens under the cut-off)."
             if lengths else f"\n\nActivations for every sample at the cut-off ({why}).")
    if drawn:
        basis += f"\n\nThe mix this run draws (dataset weights, seed {settings['seed']}): {drawn}."
    return memory_estimate.markdown(est, memory_estimate.judge(est, devices, n)) + basis


def as_drawn(settings: dict[str, Any], per: list[list[int]] | None,
             ) -> tuple[list[int] | None, str]:
    """(the tokens of the samples the run draws from datasets whose samples have `per`
    tokens, how many rows each gives when a weighted mix draws them, as
    core.data.loader.mix will at Start, else "")."""
    if per is None:
        return None, ""
    weights, names = settings.get("dataset_weights") or [], settings.get("dataset") or []
    if not weights or len(weights) != len(names):
        return [n for part in per for n in part], ""
    from core.data.loader import draw_order, mix_counts

    order = draw_order([len(p) for p in per], [float(w) for w in weights],
                       int(settings["seed"]))
    counts = mix_counts(names, order)
    said = ", ".join(f"{name} {counts[name]:,} of {len(p):,} rows"
                     for name, p in zip(names, per, strict=True))
    return [per[k][i] for k, i in order], said


def data_lengths(settings: dict[str, Any]) -> tuple[list[int] | None, float, str]:
    """(the tokens of every sample the run draws from its datasets, or None; the share of
    trained characters in the samples shown; why no lengths)."""
    per, share, why = dataset_lengths(settings)
    return as_drawn(settings, per)[0], share, why


def dataset_lengths(settings: dict[str, Any]) -> tuple[list[list[int]] | None, float, str]:
    """(the tokens of every sample of each of the run's datasets, or None; the share of
    trained characters in the samples shown; why no lengths): from the probe, as the Data
    tab's "What the model sees" counts them (cached per dataset)."""
    if settings.get("packing"):
        return None, 1.0, "packed rows fill it"
    per: list[list[int]] = []
    trained = shown = 0
    for name in settings.get("dataset") or []:
        refused = guard.browser_dataset_problem(name)
        if refused:
            return None, 1.0, f"{name}: {refused}"
        payload = {"model": settings["model"], "dataset": name,
                   "cutoff_len": int(settings["cutoff_len"]),
                   "train_on_prompt": bool(settings.get("train_on_prompt")),
                   "identity_name": settings.get("identity_name", ""),
                   "identity_author": settings.get("identity_author", ""),
                   "trust_remote_code": bool(settings.get("trust_remote_code"))}
        try:
            answer = probe.ask("preview", payload)
        except probe.ProbeError as exc:
            return None, 1.0, f"{name} could not be measured: {exc}"
        per.append(answer["lengths"])
        for sample in answer["samples"] if answer.get("kind") in ("messages", "text") else ():
            trained += sum(len(text) for text, on in sample if on)
            shown += sum(len(text) for text, on in sample if on is not None)  # no dividers
    share = trained / shown if shown else 1.0
    return (per, share, "") if any(per) else (None, 1.0, "no dataset chosen")


def parameters_markdown(result: dict[str, Any]) -> str:
    return (f"**{result['trainable']:,}** of {result['total']:,} parameters trainable "
            f"(**{100 * result['share']:.3g}%**) · {result.get('model_type') or 'model'}")


# -- command and YAML ---------------------------------------------------------------------
def preview(values: dict[str, Any], lang: str = "en") -> tuple[str, str, str]:
    """(CLI command, YAML, problems markdown)."""
    try:
        cfg = to_config(values)
    except ConfigError as exc:
        return "", "", problems_markdown(exc, lang)
    from core import distributed

    config = saves_dir() / (cfg.run_name or "RUN") / CONFIG
    notes = "".join(f"\n# {line}" for line in distributed.launch_notes(cfg, config))
    text = cfg.to_yaml()
    ds = distributed.deepspeed_config(cfg)
    if ds is not None:
        lines = json.dumps(ds, indent=2).splitlines()
        text += f"# {distributed.DEEPSPEED_FILE}, written into the run folder:\n"
        text += "".join(f"# {line}\n" for line in lines)
    return cfg.to_cli() + notes, text, ""


def save_yaml(values: dict[str, Any]) -> Path:
    """The settings as a YAML file to download; raises ConfigError."""
    cfg = to_config(values)
    folder = Path(tempfile.mkdtemp(prefix="peft-studio-"))
    path = folder / f"{cfg.run_name or cfg.method}.yaml"
    cfg.save(path)
    return path


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Widget values from a YAML file; raises ConfigError listing every problem."""
    return from_config(RunConfig.load(path))


# -- presets ------------------------------------------------------------------------------
def presets_dir() -> Path:
    return saves_dir() / "presets"


def list_presets() -> list[str]:
    folder = presets_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def save_preset(name: str, values: dict[str, Any]) -> Path:
    name = (name or "").strip()
    # "config" would make saves/presets/ look like a run folder (runs hold config.yaml).
    if not PRESET_RE.match(name) or name == "config":
        raise ConfigError([f"preset name {name!r}: use letters, digits, '_', '-' or '.' "
                           "(not 'config')"])
    cfg = to_config(values)
    presets_dir().mkdir(parents=True, exist_ok=True)
    path = presets_dir() / f"{name}.yaml"
    cfg.save(path)
    return path


def load_preset(name: str) -> dict[str, Any]:
    if name not in list_presets():
        raise ConfigError([f"no preset named {name!r}"])
    return load_yaml(presets_dir() / f"{name}.yaml")
