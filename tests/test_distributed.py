"""Runs with several processes, for real: 2 gloo processes on the CPU with the tiny random
Llama, started by the runner under torchrun, aborted, and with a rank killed; two
"machines" on this one; the settings' refusals and the generated DeepSpeed/FSDP configs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from core import distributed
from core.jobs import runner
from core.jobs.device import device_holder
from core.jobs.events import read_events
from core.jobs.process import PROCESS, kill_tree, process_alive, process_info
from core.jobs.runs import run_status
from core.schema import devices
from core.schema.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parent.parent


def tiny(tiny_model_dir: Path, **kw) -> RunConfig:
    # lora_dropout 0: dropout draws differ between one process and two, the rest must not;
    # fp32: the losses are compared to 1e-4, beyond what bf16 rounds to (auto is bf16 on a
    # CPU with bf16 units, and a batch of 1 and one of 2 round differently)
    settings = dict(model=str(tiny_model_dir), dataset=["identity"], max_steps=4,
                    batch_size=1, gradient_accumulation_steps=1, cutoff_len=96,
                    logging_steps=1, learning_rate=1e-3, lora_dropout=0.0, nproc_per_node=2,
                    precision="fp32")
    return RunConfig(**{**settings, **kw})


@pytest.fixture(autouse=True)
def no_run_outlives_its_test(saves):
    """A failed test must not leave ranks training beside the next one."""
    yield
    for run_dir in saves.iterdir():
        info = process_info(run_dir)
        if info and process_alive(run_dir):
            kill_tree(info["pid"])


def events_of(run_dir: Path) -> list[dict]:
    return read_events(run_dir)[0]


def processes_of(run_dir: Path) -> list[psutil.Process]:
    """Every live process started for this run: launcher and ranks name its config."""
    config = str(run_dir / "config.yaml")
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(config == arg for arg in (p.info["cmdline"] or [])):
            found.append(p)
    return found


def wait_for(predicate, run_dir: Path, timeout: float = 240, poll: float = 0.1):
    deadline = time.time() + timeout
    while not (found := predicate()):
        assert time.time() < deadline, (run_dir / "log.txt").read_text()
        time.sleep(poll)
    return found


def first_step(run_dir: Path) -> dict:
    return wait_for(lambda: next((e for e in events_of(run_dir) if e["type"] == "step"), None),
                    run_dir)


def assert_nothing_left(run_dir: Path, within: float) -> None:
    deadline = time.time() + within
    while processes_of(run_dir) and time.time() < deadline:
        time.sleep(0.2)
    assert not processes_of(run_dir), [p.info["cmdline"] for p in processes_of(run_dir)]
    assert device_holder(run_dir.parent) is None


def steps(run_dir: Path) -> list[dict]:
    return [e for e in events_of(run_dir) if e["type"] == "step"]


# -- a whole run ---------------------------------------------------------------------------
def test_two_processes_train_as_one_with_twice_the_batch(tiny_model_dir, saves, tmp_path):
    from core.cli.main import main

    config = tmp_path / "two.yaml"  # `peft-studio train` as a user runs it
    config.write_text(tiny(tiny_model_dir, run_name="two").to_yaml())
    assert main(["train", "--config", str(config)]) == 0
    two = saves / "two"
    assert run_status(two)[0] == "done", (two / "log.txt").read_text()
    assert_nothing_left(two, within=0)  # it returned after every rank had exited
    one = runner.start(tiny(tiny_model_dir, run_name="one", nproc_per_node=1, batch_size=2))
    assert runner.wait(one, timeout=300) == "done", (one / "log.txt").read_text()

    start = next(e for e in events_of(two) if e["type"] == "start")
    assert start["processes"] == 2 and start["devices"] == ["cpu", "cpu"]
    # one stream of steps: rank 1 reports nothing
    assert [e["step"] for e in steps(two)] == [1, 2, 3, 4]
    assert [e["type"] for e in events_of(two)].count("end") == 1
    # Same samples per step, gradients averaged over the two halves: the same curve.
    losses_two = [e["loss"] for e in steps(two)]
    losses_one = [e["loss"] for e in steps(one)]
    assert losses_two == pytest.approx(losses_one, rel=1e-4)
    assert losses_two[-1] < losses_two[0]
    # The memory estimate against the peak the 1-process run measured (resident memory,
    # whole process): the same order of magnitude.
    from core.train import memory_estimate
    from webui import probe

    facts = probe.ask("inspect", {"model": str(tiny_model_dir), "method": "lora"})
    settings = RunConfig.load(one / "config.yaml")._values
    measured = events_of(one)[-1]["peak_memory_mb"] * 2**20
    estimated = memory_estimate.estimate(facts, settings, on_gpu=False).total
    assert measured / 3 < estimated < measured * 3, (estimated / 2**20, measured / 2**20)
    assert (two / "adapter" / "adapter_config.json").is_file()
    # every rank's output is in log.txt, prefixed with its rank
    log = (two / "log.txt").read_text()
    assert "[rank0]: " in log and "[rank1]: " in log
    info = json.loads((two / PROCESS).read_text())
    assert info["argv"][:2] == ["-m", "core.distributed.launch"]


def test_dpo_in_two_processes(tiny_model_dir, saves):
    """A preference stage under torchrun: TRL's trainer joins the group like SFT's, rank 0
    alone reports the rewards, and the adapter is saved once."""
    run_dir = runner.start(tiny(tiny_model_dir, stage="dpo", dataset=["sentiment_pref"],
                                max_steps=2, cutoff_len=64))
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    assert_nothing_left(run_dir, within=10)
    start = next(e for e in events_of(run_dir) if e["type"] == "start")
    assert start["processes"] == 2
    assert [e["step"] for e in steps(run_dir)] == [1, 2]
    assert all("reward_margin" in e for e in steps(run_dir))
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    log = (run_dir / "log.txt").read_text()
    assert "[rank0]: " in log and "[rank1]: " in log


def test_abort_stops_every_rank_and_rank_0_saves(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, max_steps=100_000))
    first_step(run_dir)
    assert len(processes_of(run_dir)) == 3  # the launcher and two ranks
    t0 = time.time()
    assert runner.abort(run_dir, timeout=60) == "aborted"
    assert_nothing_left(run_dir, within=30 - (time.time() - t0))
    end = events_of(run_dir)[-1]
    assert end["type"] == "end" and end["status"] == "aborted"
    assert (Path(end["output_dir"]) / "adapter_config.json").is_file()
    assert [e["step"] for e in steps(run_dir)] == list(range(1, len(steps(run_dir)) + 1))


def test_a_killed_rank_fails_the_run_naming_it(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, max_steps=100_000))
    first_step(run_dir)
    rank1 = next(p for p in processes_of(run_dir) if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGKILL)
    t0 = time.time()
    assert runner.wait(run_dir, timeout=60) == "failed"
    assert time.time() - t0 < 60
    assert_nothing_left(run_dir, within=10)
    end = events_of(run_dir)[-1]
    assert end["failed_rank"] == 1
    assert end["error"].startswith("rank 1 was killed by SIGKILL; its last log line: ")


def lora_weights(result: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(result / "adapter_model.safetensors"))


def test_zero2_and_zero3_on_the_cpu_save_what_was_trained(tiny_model_dir, saves):
    """DeepSpeed's CPU accelerator (gloo) runs ZeRO here: 2 processes x batch 1, ZeRO-2 and
    ZeRO-3, the same curve. Under ZeRO-3 each rank holds only its shard of every weight,
    and the adapter (a checkpoint mid-run and the result) must be the whole trained one,
    gathered by every rank: the same as ZeRO-2's, whose rank 0 holds every weight. About
    45 s here, plus about a minute once per machine while DeepSpeed compiles its
    shared-memory op (cached under ~/.cache/torch_extensions)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra "
                        "(peft-studio[deepspeed]); not installed here")
    import torch

    from core.methods.result import load_trained

    zero2 = runner.start(tiny(tiny_model_dir, run_name="zero2", distributed="zero2"))
    assert runner.wait(zero2, timeout=400) == "done", (zero2 / "log.txt").read_text()
    assert_nothing_left(zero2, within=10)
    zero3 = runner.start(tiny(tiny_model_dir, run_name="zero3", distributed="zero3",
                              save_steps=2))
    assert runner.wait(zero3, timeout=400) == "done", (zero3 / "log.txt").read_text()
    assert_nothing_left(zero3, within=10)

    for run_dir in (zero2, zero3):
        start = next(e for e in events_of(run_dir) if e["type"] == "start")
        assert start["processes"] == 2
        assert [e["step"] for e in steps(run_dir)] == [1, 2, 3, 4]
        assert (run_dir / distributed.DEEPSPEED_FILE).is_file()
    losses = [e["loss"] for e in steps(zero3)]
    assert losses == pytest.approx([e["loss"] for e in steps(zero2)], rel=1e-4)
    assert losses[-1] < losses[0]

    trained = lora_weights(zero2 / "adapter")
    assert trained and all(v.numel() for v in trained.values())
    # lora_B starts at zero: nonzero means trained weights, not fresh ones
    assert all(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)
    gathered = lora_weights(zero3 / "adapter")
    assert gathered.keys() == trained.keys()
    for key, value in trained.items():
        assert gathered[key].shape == value.shape, key  # not rank 0's empty shard
        assert torch.allclose(gathered[key].to(value.dtype), value, atol=1e-5), key
    # the checkpoint, gathered mid-run, is whole too, and differs from the end's
    checkpoint = lora_weights(zero3 / "checkpoints" / "step-2")
    assert {k: v.shape for k, v in checkpoint.items()} == {k: v.shape for k, v in
                                                           trained.items()}
    assert any(not bool((checkpoint[k] == v).all()) for k, v in gathered.items())
    # and the result opens as any other: the loaded adapter holds the gathered weights
    model, _ = load_trained(zero3 / "adapter")
    state = model.state_dict()
    for key, value in gathered.items():
        loaded = state[key.replace(".weight", ".default.weight")]
        assert bool((loaded == value.to(loaded.dtype)).all()), key


# -- several machines ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_second_machine_joins_with_the_command_shown(tiny_model_dir, saves, tmp_path,
                                                     monkeypatch):
    from webui import guard

    monkeypatch.setattr(guard.POLICY, "allow_multi_node", True)  # --allow-multi-node
    cfg = tiny(tiny_model_dir, nproc_per_node=1, nnodes=2, master_addr="127.0.0.1",
               master_port=free_port())
    from webui.tabs.train import handlers as training

    started = training.start(cfg.to_dict())  # as the Train tab's Start does
    node0 = started.run_dir
    (command,) = distributed.node_commands(cfg, node0 / "config.yaml")
    assert command == f"peft-studio train --config {node0 / 'config.yaml'} --node-rank 1"
    assert f"- machine 1: `{command}`" in started.message
    # "machine 1" has its own saves/ (on one machine the device lock would refuse it)
    other = tmp_path / "machine1"
    env = {**os.environ, "PEFT_STUDIO_SAVES": str(other), "PYTHONPATH": str(ROOT)}
    argv = command.split()[1:]
    out = subprocess.run([sys.executable, "-m", "core.cli", *argv], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert runner.wait(node0, timeout=120) == "done", (node0 / "log.txt").read_text()
    start = next(e for e in events_of(node0) if e["type"] == "start")
    assert start["processes"] == 2 and start["nodes"] == 2
    assert [e["step"] for e in steps(node0)] == [1, 2, 3, 4]
    (node1,) = [p for p in other.iterdir() if (p / "config.yaml").is_file()]
    assert RunConfig.load(node1 / "config.yaml").node_rank == 1
    end1 = events_of(node1)[-1]
    assert end1["status"] == "done" and "machine 0" in end1["note"]
    assert not (node1 / "adapter").exists()  # rank 0, on machine 0, writes the result


# -- settings and their refusals -----------------------------------------------------------
def refusal(**settings) -> str:
    with pytest.raises(ConfigError) as exc:
        RunConfig(**settings)
    return str(exc.value)


def test_devices_settings_come_from_the_one_schema():
    from core.schema.config import SETTINGS

    names = [s.name for s in devices.SETTINGS]
    assert names == ["nproc_per_node", "devices", "distributed", "offload", "nnodes",
                     "node_rank", "master_addr", "master_port", "ddp_timeout"]
    assert all(SETTINGS[n].group == "devices" for n in names)
    assert RunConfig().ddp_timeout == 30
    cfg = RunConfig(nproc_per_node=2, distributed="zero2", ddp_timeout=5)
    assert cfg.to_cli() == ("peft-studio train --distributed zero2 --nproc-per-node 2 "
                            "--ddp-timeout 5") or "--nproc-per-node 2" in cfg.to_cli()
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg


@pytest.mark.parametrize(("settings", "why"), [
    (dict(distributed="zero3", quantization="4bit"), "bitsandbytes' 4bit weights cannot be split"),
    (dict(distributed="fsdp", quantization="4bit"), "FSDP cannot shard bitsandbytes' 4bit"),
    (dict(distributed="fsdp", method="prefix"), "cannot shard them; use ddp or zero2"),
    (dict(distributed="zero3", method="prompt"), "virtual tokens outside every layer"),
    (dict(offload=True), "offload: applies to DeepSpeed ZeRO only"),
    (dict(nnodes=2), "master_addr: with more than one machine"),
    (dict(nnodes=2, master_addr="10.0.0.1", node_rank=2), "number the machines 0 to 1"),
    (dict(devices="0;1"), "is not a list of GPU numbers"),
    (dict(devices="0,1", nproc_per_node=3), "use at most 2, one per GPU"),
    (dict(stage="dpo", dataset=["pairs"], nproc_per_node=2, distributed="zero2"),
     "not supported for preference stages yet"),
])
def test_combinations_that_cannot_work_are_refused_saying_why(settings, why):
    assert why in refusal(**settings)


def test_what_this_machine_lacks_is_said_at_start(monkeypatch, tiny_model_dir, saves):
    cfg = RunConfig(model=str(tiny_model_dir), distributed="zero2", nproc_per_node=2)
    monkeypatch.setattr(distributed, "deepspeed_installed", lambda: False)
    problems = distributed.launch_problems(cfg, gpus=0)
    assert problems == ["distributed: zero2 needs DeepSpeed, which is not installed; install "
                        "it with `pip install 'peft-studio[deepspeed]'`, or choose ddp"]
    with pytest.raises(ConfigError, match="peft-studio\\[deepspeed\\]"):
        runner.start(cfg)
    assert not any(saves.iterdir()) or not any(p.is_dir() for p in saves.iterdir())
    fsdp = cfg.replace(distributed="fsdp")
    assert "FSDP needs GPUs" in distributed.launch_problems(fsdp, gpus=0)[0]
    assert distributed.launch_problems(fsdp, gpus=2) == []
    many = RunConfig(nproc_per_node=4)
    assert "this machine shows 2 GPU(s); use at most 2" in distributed.launch_problems(
        many, gpus=2)[0]
    assert "names GPUs, and no GPU is visible" in distributed.launch_problems(
        RunConfig(devices="0"), gpus=0)[0]
    assert "GPU 3 does not exist here" in distributed.launch_problems(
        RunConfig(devices="3"), gpus=2)[0]


def test_auto_processes_follow_the_devices():
    assert distributed.processes(RunConfig(), gpus=0) == 1
    assert distributed.processes(RunConfig(), gpus=4) == 4
    assert distributed.processes(RunConfig(devices="1,3"), gpus=4) == 2
    assert distributed.processes(RunConfig(nproc_per_node=3), gpus=0) == 3
    assert not distributed.launched(RunConfig(), gpus=0)
    assert distributed.launched(RunConfig(), gpus=2)
    assert distributed.launched(RunConfig(distributed="zero2"), gpus=1)
    assert distributed.environment(RunConfig(devices="1,3"))["CUDA_VISIBLE_DEVICES"] == "1,3"


def test_the_commands_for_this_and_the_other_machines():
    cfg = RunConfig(nproc_per_node=4, nnodes=3, node_rank=0, master_addr="10.0.0.1",
                    master_port=29400)
    line = distributed.command(cfg, "saves/r/config.yaml")
    assert line.startswith("python -m torch.distributed.run --nproc-per-node 4 --nnodes 3 "
                           "--node-rank 0 --master-addr 10.0.0.1 --master-port 29400 ")
    assert line.endswith(" -m core.train saves/r/config.yaml")
    assert distributed.node_commands(cfg, "saves/r/config.yaml") == [
        "peft-studio train --config saves/r/config.yaml --node-rank 1",
        "peft-studio train --config saves/r/config.yaml --node-rank 2"]
    single = distributed.command(RunConfig(nproc_per_node=2), "c.yaml")
    assert "--standalone" in single and "--master-port" not in single


def test_cli_joins_as_another_machine_and_validates_the_rank(tmp_path):
    config = tmp_path / "config.yaml"
    RunConfig(nnodes=2, master_addr="10.0.0.1", nproc_per_node=1).save(config)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PEFT_STUDIO_SAVES": str(tmp_path / "s")}
    ok = subprocess.run([sys.executable, "-m", "core.cli", "train", "--config", str(config),
                         "--node-rank", "1", "--print-config"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert RunConfig.from_yaml(ok.stdout).node_rank == 1
    bad = subprocess.run([sys.executable, "-m", "core.cli", "train", "--config", str(config),
                          "--node-rank", "2", "--print-config"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "node_rank: 2 with 2 machine(s); number the machines 0 to 1" in bad.stderr


# -- generated DeepSpeed and FSDP configs against transformers -----------------------------
def training_args(tmp_path: Path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=2,
                             gradient_accumulation_steps=4, max_grad_norm=0.5,
                             learning_rate=1e-4, report_to="none", use_cpu=True, **kw)


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
@pytest.mark.parametrize("offload", [False, True])
def test_deepspeed_json_fills_every_auto_value_from_training_arguments(
        strategy, offload, tmp_path, tiny_model_dir):
    """transformers' own filling (HfTrainerDeepSpeedConfig) run on accelerate's parser,
    which needs no DeepSpeed: every "auto" is one transformers knows how to fill."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers import AutoConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    cfg = RunConfig(distributed=strategy, offload=offload)
    path = distributed.write_deepspeed_config(cfg, tmp_path)
    written = json.loads(path.read_text())
    assert written["zero_optimization"]["stage"] == int(strategy[-1])
    methods = {k: HfTrainerDeepSpeedConfig.__dict__[k] for k in
               ("fill_match", "fill_only", "is_auto", "trainer_config_process",
                "trainer_config_finalize")}
    checker = type("Check", (HfDeepSpeedConfig,), methods)(str(path))
    checker.mismatches = []
    checker.trainer_config_process(training_args(tmp_path))
    model = type("M", (), {"config": AutoConfig.from_pretrained(tiny_model_dir)})()
    checker.trainer_config_finalize(training_args(tmp_path), model, 10)
    assert "auto" not in json.dumps(checker.config)
    assert checker.config["train_batch_size"] == 8 and checker.config["gradient_clipping"] == 0.5
    assert checker.is_zero3() == (strategy == "zero3")
    assert checker.is_offload() == offload


def test_deepspeed_json_is_accepted_by_training_arguments(tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra "
                        "(peft-studio[deepspeed]); not installed here")
    kwargs = distributed.trainer_kwargs(RunConfig(distributed="zero2"), tmp_path, True, 1)
    args = training_args(tmp_path, **kwargs)
    assert args.hf_deepspeed_config.get_value("zero_optimization.stage") == 2


def test_fsdp_and_ddp_settings_are_accepted_by_training_arguments(tmp_path):
    ddp = distributed.trainer_kwargs(RunConfig(ddp_timeout=7), tmp_path, True, 2)
    assert ddp == {"ddp_timeout": 420, "ddp_backend": "gloo"}
    # Both make accelerate join a process group: a rank of a one-process group, in a
    # process of its own so that this one stays clean.
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from transformers import TrainingArguments\n"
        "from core import distributed\n"
        "from core.schema.config import RunConfig\n"
        "kw = distributed.trainer_kwargs(RunConfig(distributed='fsdp'), Path(sys.argv[1]), "
        "False, 1)\n"
        "a = TrainingArguments(output_dir=sys.argv[1], report_to='none', use_cpu=True, **kw)\n"
        "d = TrainingArguments(output_dir=sys.argv[1], report_to='none', use_cpu=True, "
        "**distributed.trainer_kwargs(RunConfig(ddp_timeout=7), Path(sys.argv[1]), True, 2))\n"
        "print(d.ddp_timeout, d.ddp_backend, d.parallel_mode.value)\n"
        "print(json.dumps({k: str(v) for k, v in a.fsdp_plugin_args.items()}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    *_, ddp_line, fsdp_line = out.stdout.strip().splitlines()
    assert ddp_line == "420 gloo distributed"
    plugin = json.loads(fsdp_line)
    assert plugin["fsdp_version"] == "2" and plugin["reshard_after_forward"] == "True"
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_preview_shows_how_the_run_starts_and_its_deepspeed_json(saves, monkeypatch):
    from webui import guard
    from webui.tabs.train import handlers as training

    monkeypatch.setattr(guard.POLICY, "allow_multi_node", True)  # --allow-multi-node

    cli, yaml_text, problems = training.preview(
        {"nproc_per_node": 2, "distributed": "zero3", "nnodes": 2, "master_addr": "10.0.0.1",
         "run_name": "big"})
    assert problems == ""
    first, started, other = cli.splitlines()
    assert first.startswith("peft-studio train ") and "--nproc-per-node 2" in first
    config = saves / "big" / "config.yaml"
    cfg = RunConfig.from_yaml(yaml_text)
    assert started == f"# started as: {distributed.command(cfg, config)}"
    assert other == f"# on machine 1: peft-studio train --config {config} --node-rank 1"
    ds = yaml_text.split("# deepspeed.json, written into the run folder:\n")[1]
    as_json = json.loads("".join(line[2:] + "\n" for line in ds.splitlines()))
    assert as_json == distributed.deepspeed_config(cfg)
    assert as_json["zero_optimization"]["stage"] == 3
    single, _, _ = training.preview({})
    assert "\n" not in single  # one process: nothing more to say


@pytest.mark.slow
def test_embedded_model_in_two_processes(saves):
    """The real model (SmolLM2-135M) in 2 gloo processes: about 30 s here."""
    cfg = RunConfig(dataset=["identity"], max_steps=3, batch_size=1,
                    gradient_accumulation_steps=1, cutoff_len=96, logging_steps=1,
                    nproc_per_node=2)
    run_dir = runner.start(cfg)
    assert runner.wait(run_dir, timeout=300) == "done", (run_dir / "log.txt").read_text()
    assert [e["step"] for e in steps(run_dir)] == [1, 2, 3]
    assert next(e for e in events_of(run_dir) if e["type"] == "start")["processes"] == 2
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert_nothing_left(run_dir, within=10)
