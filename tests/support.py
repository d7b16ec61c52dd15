"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.cli.main import main
from core.jobs import runner
from core.jobs.events import read_events
from core.schema.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Say the code word."
ANSWER = "The code word is pineapple."


def events_of(run_dir: Path) -> list[dict]:
    return read_events(run_dir)[0]


def tiny(tiny_model_dir: Path, **kw) -> RunConfig:
    """A few steps of LoRA on `identity` with the tiny random Llama."""
    settings = dict(model=str(tiny_model_dir), dataset=["identity"], max_steps=4,
                    batch_size=2, gradient_accumulation_steps=1, cutoff_len=96,
                    logging_steps=1, learning_rate=1e-3)
    return RunConfig(**{**settings, **kw})


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """The CLI's exit code and everything it printed; it must never print a traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return code, text


def train_code_word_run(tiny_model_dir: Path, saves: Path, **kw) -> Path:
    """A finished tiny LoRA run whose greedy answer to PROMPT is ANSWER."""
    data = saves.parent / "code_word.json"
    data.write_text(json.dumps([{"instruction": PROMPT, "input": "", "output": ANSWER}]))
    settings = dict(model=str(tiny_model_dir), dataset=[str(data)], max_steps=30,
                    learning_rate=1e-2, lr_scheduler_type="constant", batch_size=1,
                    gradient_accumulation_steps=1, cutoff_len=64, lora_rank=16,
                    lora_dropout=0.0, logging_steps=10, save_steps=15, run_name="code-word")
    run_dir = runner.start(RunConfig(**{**settings, **kw}), saves)
    status = runner.wait(run_dir, timeout=600)
    assert status == "done", (run_dir / "log.txt").read_text()[-3000:]
    return run_dir


def kill_after_first_checkpoint(run_dir: Path) -> None:
    """SIGKILL the trainer as soon as it has written a resume point, as a power cut would."""
    from core.jobs.device import device_holder
    from core.jobs.process import PROCESS, kill_tree
    from core.jobs.resume import resume_points
    from core.jobs.runs import RUNNING, run_status

    deadline = time.time() + 300
    while not resume_points(run_dir):
        assert time.time() < deadline and run_status(run_dir)[0] == RUNNING, \
            (run_dir / "log.txt").read_text()[-2000:]
        time.sleep(0.02)
    pid = json.loads((run_dir / PROCESS).read_text())["pid"]
    os.killpg(pid, signal.SIGSTOP)  # nothing more happens between seeing it and the kill
    kill_tree(pid)
    deadline = time.time() + 60
    while device_holder(run_dir.parent) is not None:  # every process is gone
        assert time.time() < deadline, "the killed run still holds the device"
        time.sleep(0.05)


@contextmanager
def serving(saves: Path, args: list[str]) -> Iterator[tuple[Path, dict]]:
    """`peft-studio serve ARGS --port 0 --detach` started as a user starts it, in `saves`:
    (its job folder, its ready event) once it answers; stopped afterwards, so a failed
    start or test never leaves a server behind."""
    import subprocess
    import sys

    from core.jobs.process import process_alive
    from core.jobs.runs import RUNNING, run_status
    from core.serve.job import ready_event

    env = {**os.environ, "PEFT_STUDIO_SAVES": str(saves),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "core.cli", "serve", *args, "--port", "0",
                          "--detach"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    job = Path(out.stdout.split("serving job:")[1].split()[0])
    try:
        deadline = time.time() + 120
        while (ready := ready_event(job)) is None:
            assert time.time() < deadline, (job / "log.txt").read_text()[-3000:]
            assert run_status(job)[0] == RUNNING, (job / "log.txt").read_text()
            time.sleep(0.2)
        yield job, ready
    finally:
        if process_alive(job):
            runner.abort(job, timeout=10)
