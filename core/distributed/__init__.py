"""Several processes, GPUs and machines: the "Devices" settings and what follows from them.

A run with more than one process (or DeepSpeed, or several machines) is started by
`core.distributed.launch`, which runs torchrun (`torch.distributed.run`) with the arguments
built here; each rank runs `core.train.trainer` as usual. DeepSpeed comes in through
transformers' integration (a JSON written into the run folder), FSDP through TrainingArguments'
fsdp settings.

This module never imports torch: the UI validates and previews with it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from core.schema.config import SETTINGS as ALL
from core.schema.devices import device_list

DEEPSPEED_FILE = "deepspeed.json"
RANKS_DIR = "ranks"  # torchrun's per-rank log files
# Rank lines in log.txt start with this (torchrun's log line prefix template).
RANK_PREFIX = "[rank${rank}]: "
INSTALL_DEEPSPEED = "pip install 'peft-studio[deepspeed]'"




# -- the machine, without torch ----------------------------------------------------------
def visible_gpus() -> int:
    """NVIDIA GPUs this process may use: the driver's list, narrowed by
    CUDA_VISIBLE_DEVICES. Read without torch (the UI never imports it)."""
    found = 0
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        found = len(list(gpus.iterdir()))
    elif shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=10).stdout
            found = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.TimeoutExpired):
            found = 0
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        listed = [d for d in mask.split(",") if d.strip() and d.strip() != "-1"]
        found = min(found, len(listed))
    return found


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


# -- what a config asks for --------------------------------------------------------------
def processes(values: Any, gpus: int | None = None) -> int:
    """Processes on this machine: the setting, or auto (every chosen or visible GPU, 1 on
    a CPU; preference stages train in one process)."""
    v = _get(values)
    if v["nproc_per_node"] > 0:
        return int(v["nproc_per_node"])
    chosen = device_list(v["devices"]) or []
    return len(chosen) or (visible_gpus() if gpus is None else gpus) or 1


def launched(values: Any, gpus: int | None = None) -> bool:
    """Whether the run starts under torchrun rather than as one plain process."""
    v = _get(values)
    return processes(v, gpus) > 1 or v["nnodes"] > 1 or v["distributed"] != "ddp"


def launch_problems(cfg: Any, gpus: int | None = None) -> list[str]:
    """What this machine lacks for the config (checked when a run starts)."""
    v = _get(cfg)
    gpus = visible_gpus() if gpus is None else gpus
    problems = []
    strategy = v["distributed"]
    if strategy in ("zero2", "zero3") and not deepspeed_installed():
        problems.append(f"distributed: {strategy} needs DeepSpeed, which is not installed; "
                        f"install it with `{INSTALL_DEEPSPEED}`, or choose ddp")
    if strategy == "fsdp" and gpus == 0:
        problems.append("distributed: FSDP needs GPUs (on a CPU accelerate quietly turns it "
                        "into plain DDP); choose ddp on this machine")
    chosen = device_list(v["devices"]) or []
    if chosen and gpus == 0:
        problems.append(f"devices: {v['devices']!r} names GPUs, and no GPU is visible here; "
                        "leave it empty to train on the CPU")
    elif chosen and max(chosen) >= gpus:
        problems.append(f"devices: GPU {max(chosen)} does not exist here; this machine shows "
                        f"{gpus} GPU(s), numbered 0 to {gpus - 1}")
    n = processes(v, gpus)
    if gpus and not chosen and n > gpus:
        problems.append(f"nproc_per_node: {n} processes, and this machine shows {gpus} "
                        f"GPU(s); use at most {gpus}, one per GPU")
    if not gpus and n > (os.cpu_count() or 1):
        problems.append(f"nproc_per_node: {n} processes on {os.cpu_count()} CPU core(s); "
                        "use at most one process per core")
    return problems


def _get(values: Any) -> dict[str, Any]:
    if isinstance(values, dict):
        return {n: values.get(n, s.default) for n, s in ALL.items()}
    return values.all_values()


# -- the launch ----------------------------------------------------------------------------
def torchrun_args(cfg: Any, config_path: Path, node_rank: int | None = None) -> list[str]:
    """torchrun's arguments (after `python -m torch.distributed.run`) for this config."""
    v = _get(cfg)
    rank = v["node_rank"] if node_rank is None else node_rank
    args = ["--nproc-per-node", str(processes(v))]
    if v["nnodes"] > 1:
        args += ["--nnodes", str(v["nnodes"]), "--node-rank", str(rank),
                 "--master-addr", v["master_addr"], "--master-port", str(v["master_port"])]
    else:
        args += ["--standalone"]  # a free port on this machine: two runs never collide
    run_dir = Path(config_path).parent
    args += [
        # Every rank's output into log.txt, each line prefixed with its rank (and kept
        # per rank under ranks/).
        "--tee", "3", "--log-dir", str(run_dir / RANKS_DIR),
        # SIGTERM is the runner's abort: the ranks stop together at a step (core.train.trainer)
        # and rank 0 saves; torchrun must not kill them for it.
        "--signals-to-handle", "SIGHUP,SIGQUIT",
        # A dead rank: the others get this long to exit before they are killed.
        "--shutdown-timeout", "20",
        "--max-restarts", "0",
        "-m", "core.train", str(config_path),
    ]
    return args


def command(cfg: Any, config_path: str | Path, node_rank: int | None = None) -> str:
    """The torchrun command line for this machine (as the run folder's process starts it)."""
    args = torchrun_args(cfg, Path(config_path), node_rank)
    return shlex.join(["python", "-m", "torch.distributed.run", *args])


def node_commands(cfg: Any, config_path: str | Path) -> list[str]:
    """The command to run on each other machine (1 .. nnodes-1), with the same config."""
    v = _get(cfg)
    return [f"peft-studio train --config {shlex.quote(str(config_path))} --node-rank {k}"
            for k in range(1, v["nnodes"])]


def environment(cfg: Any) -> dict[str, str]:
    """Environment for the run's processes."""
    v = _get(cfg)
    env = {"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": RANK_PREFIX}
    if not visible_gpus():
        # torchrun gives each rank one thread; on a CPU the cores are the accelerator.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes(v)))
    if v["devices"]:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in device_list(v["devices"]) or [])
    return env


def deepspeed_config(cfg: Any) -> dict[str, Any] | None:
    """The DeepSpeed JSON for zero2/zero3 ("auto" values are filled in by transformers
    from TrainingArguments), or None for ddp and fsdp."""
    v = _get(cfg)
    stage = {"zero2": 2, "zero3": 3}.get(v["distributed"])
    if stage is None:
        return None
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto",
                     "stage3_param_persistence_threshold": "auto",
                     # the adapter (or model) is saved whole, not as shards
                     "stage3_gather_16bit_weights_on_model_save": True})
    if v["offload"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        # Our optimizers (paged 8-bit, LoRA+'s groups) are not on DeepSpeed's tested list.
        "zero_allow_untested_optimizer": True,
    }


def write_deepspeed_config(cfg: Any, run_dir: Path) -> Path | None:
    ds = deepspeed_config(cfg)
    if ds is None:
        return None
    from core.fsutil import atomic_write_text

    path = run_dir / DEEPSPEED_FILE
    atomic_write_text(path, json.dumps(ds, indent=2) + "\n")
    return path


def trainer_kwargs(cfg: Any, run_dir: Path, on_cpu: bool, world_size: int) -> dict[str, Any]:
    """TrainingArguments for the distributed settings (nothing for one plain process)."""
    v = _get(cfg)
    kwargs: dict[str, Any] = {}
    if world_size > 1:
        kwargs["ddp_timeout"] = int(v["ddp_timeout"]) * 60
        if on_cpu:
            # Without it the Trainer on a CPU never joins the group: each rank trains alone.
            kwargs["ddp_backend"] = "gloo"
    if v["distributed"] in ("zero2", "zero3"):
        path = run_dir / DEEPSPEED_FILE
        if not path.is_file():
            write_deepspeed_config(cfg, run_dir)
        kwargs["deepspeed"] = str(path)
    elif v["distributed"] == "fsdp":
        # FSDP2 (transformers' default): each decoder layer (the model's _no_split_modules)
        # is one shard unit, its weights gathered for its forward and freed after.
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = {"version": 2, "reshard_after_forward": True,
                                 "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    return kwargs


def launch_notes(cfg: Any, config_path: str | Path) -> list[str]:
    """How a run with these settings starts, for the command preview: torchrun's command
    and each other machine's. Empty for one plain process."""
    if not launched(cfg):
        return []
    notes = [f"started as: {command(cfg, config_path)}"]
    notes += [f"on machine {k}: {line}"
              for k, line in enumerate(node_commands(cfg, config_path), start=1)]
    return notes
