"""Faults, caused for real on the tiny random Llama: a diverging run, NaN weights, aborts
during the final save, a full disk, a killed trainer, a restarted UI, racing starts, and
the device shared by training, evaluation and comparison. Nothing under test is mocked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import events_of, tiny

from core.chat import engine as chat
from core.experiments import compare
from core.fsutil import atomic_write_text
from core.jobs import runner, runs
from core.jobs.device import BusyError, device_holder, hold_device
from core.jobs.process import PROCESS, process_alive
from core.jobs.runs import active_run, list_runs, run_status
from core.train.health import Health

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, run_dir: Path, timeout: float = 120, poll: float = 0.05):
    deadline = time.time() + timeout
    while not (found := predicate()):
        log = run_dir / "log.txt"
        assert time.time() < deadline, log.read_text() if log.is_file() else "timed out"
        time.sleep(poll)
    return found


def status_from_fresh_process(run_dir: Path) -> str:
    """What a restarted UI would see: a new interpreter that knows only the folder."""
    code = ("from pathlib import Path\nfrom core.jobs.runs import run_status\n"
            f"print(run_status(Path({str(run_dir)!r}))[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# -- 1. divergence is told, not hidden ---------------------------------------------------
def test_the_users_diverging_run_is_caught_by_the_rules():
    """The losses and gradient norms of the run that ended `done` with a ruined model."""
    health = Health(vocab_size=49152)
    seen = [(1, 4.0, 40.0), (2, 30.0, 900.0), (3, 119.0, 5e3)]
    reasons = [health.check_log(s, loss, g) for s, loss, g in seen]
    assert reasons[0] is None and "exploded to 30" in reasons[1]
    # and its tail alone: stuck at a uniform guess with no gradient
    health = Health(vocab_size=49152)
    tail = [health.check_log(s, 10.80, 0.0) for s in (7, 8)]
    assert tail[0] is None and "collapsed" in tail[1]
    # a healthy run from a random model starts at log V and is left alone
    health = Health(vocab_size=49152)
    assert all(health.check_log(s, loss, 2.0) is None
               for s, loss in enumerate([10.8, 10.5, 12.0, 9.1, 7.7], 1))


def test_diverging_run_fails_at_its_step_and_offers_no_result(tiny_model_dir, saves):
    # Full tuning, learning rate 1, clipping off: 10.8 -> 19.5 -> 57.0 on the tiny model.
    run_dir = runner.start(tiny(tiny_model_dir, method="full", learning_rate=1.0,
                                max_grad_norm=0, optim="adamw_torch", max_steps=8,
                                save_steps=2))
    assert runner.wait(run_dir, timeout=300) == "failed", (run_dir / "log.txt").read_text()
    events = events_of(run_dir)
    end = events[-1]
    assert end["diverged"] is True and end["step"] == 3
    assert "training diverged at step 3" in end["error"]
    assert "lower the learning rate (now 1)" in end["error"]
    assert "turn clipping back on (max_grad_norm is 0" in end["error"]
    assert [e["step"] for e in events if e["type"] == "diverged"] == [3]
    assert max(e["step"] for e in events if e["type"] == "step") == 3  # stopped there
    # No folder that looks like a result; the checkpoint is kept under a telling name.
    assert not (run_dir / "model").exists() and not (run_dir / "checkpoints").exists()
    assert (run_dir / "checkpoints-before-divergence" / "step-2" / "studio.json").is_file()
    # Chat, Evaluate and Export pick runs through these: nothing to offer.
    assert runs.run_output(run_dir) is None and runs.checkpoints(run_dir) == {}
    assert run_dir not in runs.finished_runs()
    with pytest.raises(ValueError, match="has no result"):
        runs.run_target(run_dir, "step-2")
    info = list_runs()[0]
    assert info.status == "failed" and "diverged" in info.error
    from webui.live import monitor
    from webui.tabs.train import history

    assert "✗ **Diverged:** training diverged at step 3" in monitor.stats(
        monitor.attach(run_dir))
    assert f"{run_dir.name}: failed (diverged at step 3)" in monitor.progress(
        monitor.attach(run_dir))
    assert history.table()["status"].tolist() == ["failed (diverged)"]
    details = history.curves([run_dir.name])[2]
    assert details.startswith(f"**{run_dir.name}**: failed (diverged)")
    assert "training diverged at step 3" in details


def test_nan_in_the_weights_stops_the_run_at_that_step(tiny_model_dir, saves, tmp_path):
    """A corrupt base (one NaN in a layer norm) gives a NaN loss at step 1; the Trainer's
    NaN filter would have averaged it away and trained on."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-llama"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.1.input_layernorm.weight"][0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    run_dir = runner.start(tiny(broken, max_steps=3))
    assert runner.wait(run_dir, timeout=300) == "failed", (run_dir / "log.txt").read_text()
    end = events_of(run_dir)[-1]
    assert end["diverged"] and end["step"] == 1
    assert "at step 1" in end["error"] and "nan" in end["error"].lower()
    assert not (run_dir / "adapter").exists()


# -- 2. nothing lost ---------------------------------------------------------------------
def test_aborts_during_the_final_save_wait_for_it(tiny_model_dir, saves):
    """Abort clicks that land while the result is written (a full model: the slowest save)
    neither cut it short nor call a finished run aborted; an evaluation queued meanwhile
    waits for the device, visibly, and then runs."""
    run_dir = runner.start(tiny(tiny_model_dir, method="full", max_steps=2))
    pid = json.loads((run_dir / PROCESS).read_text())["pid"]
    wait_for(lambda: any(e["type"] == "saving" for e in events_of(run_dir)), run_dir,
             poll=0.005)
    for _ in range(2):  # two Abort clicks: two SIGTERMs
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.01)
    # A third, whose kill deadline (0 s) has passed before the save can end: the runner
    # waits for the save instead of killing the process in the middle of it.
    assert runner.abort(run_dir, timeout=0) == "done"
    end = events_of(run_dir)[-1]
    assert end["status"] == "done" and end["steps"] == 2
    log = (run_dir / "log.txt").read_text()
    assert "abort requested while saving" in log, log
    model = Path(end["output_dir"])
    assert (model / "model.safetensors").is_file() and (model / "studio.json").is_file()
    assert not [p for p in run_dir.iterdir() if ".partial" in p.name]
    assert runs.run_output(run_dir) == model

    from core.evaluate import job as evaluate
    from core.export import job as export

    holder = hold_device("a test holding the device")
    try:
        with pytest.raises(BusyError, match="a test holding the device"):
            runner.start(tiny(tiny_model_dir))
        job = evaluate.start(evaluate.EvalSpec(str(run_dir), ["identity"], max_samples=2,
                                               max_new_tokens=4, include_base=False))
        waiting = wait_for(lambda: evaluate.job_state(job).message.startswith("waiting"),
                           job)
        assert waiting and "a test holding the device" in evaluate.job_state(job).message
        # An export queues behind the device the same way, and says for whom it waits.
        shipped = export.start(export.ExportSpec(str(run_dir), "after-abort"))
        wait_for(lambda: export.job_state(shipped)["message"].startswith("waiting"), shipped)
        assert "a test holding the device" in export.job_state(shipped)["message"]
        assert export.job_state(shipped)["status"] == "running"
    finally:
        holder.close()
    assert runner.wait(job, timeout=300) == "done", (job / "log.txt").read_text()
    assert runner.wait(shipped, timeout=300) == "done", (shipped / "log.txt").read_text()
    assert (export.export_path("after-abort") / "model.safetensors").is_file()


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({out.stderr.strip()})")


@pytest.fixture()
def small_disk(tmp_path, monkeypatch):
    """saves/ on a 1 MB tmpfs: room for a run's settings, events and log, not for its
    result (the tokenizer alone is 3.5 MB)."""
    disk = tmp_path / "small"
    _mount_tmpfs(disk, "1m")
    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(disk))
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("save_steps", [2, 0], ids=["checkpoint", "final-save"])
def test_disk_full_fails_clearly_and_leaves_no_half_result(tiny_model_dir, small_disk,
                                                           save_steps):
    run_dir = runner.start(tiny(tiny_model_dir, max_steps=3, save_steps=save_steps))
    assert runner.wait(run_dir, timeout=300) == "failed", (run_dir / "log.txt").read_text()
    end = events_of(run_dir)[-1]
    where = run_dir / ("checkpoints/step-2" if save_steps else "adapter")
    assert end["error"].startswith(f"disk full writing {where}"), end["error"]
    assert "free some space" in end["error"]
    leftovers = [p for p in run_dir.rglob("*") if p.is_dir()
                 and (p.name in ("adapter", "step-2") or ".partial" in p.name)]
    assert leftovers == []
    assert runs.checkpoints(run_dir) == {}


def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(small_disk):
    path = small_disk / "results.json"
    atomic_write_text(path, "old")
    with pytest.raises(OSError):
        atomic_write_text(path, "x" * 2_000_000)
    assert path.read_text() == "old"
    assert sorted(p.name for p in small_disk.iterdir()) == ["results.json"]


# -- 5, 6. the process: killed, watched from a restarted UI, recycled pids ----------------
def test_killed_trainer_is_failed_and_a_restarted_ui_reattaches(tiny_model_dir, saves):
    run_dir = runner.start(tiny(tiny_model_dir, max_steps=2000))
    wait_for(lambda: any(e["type"] == "step" for e in events_of(run_dir)), run_dir)
    assert status_from_fresh_process(run_dir) == "running"
    pid = json.loads((run_dir / PROCESS).read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(run_dir), run_dir, timeout=30)
    status, end = run_status(run_dir)
    assert status == "failed" and "ended without reporting" in end["error"]
    # The kernel drops a dead trainer's lock once its last thread is gone (the main
    # thread already shows as a zombie a moment before).
    wait_for(lambda: device_holder() is None, run_dir, timeout=30)

    second = runner.start(tiny(tiny_model_dir, max_steps=3))
    assert status_from_fresh_process(second) == "running"
    assert runner.wait(second, timeout=300) == "done"
    assert status_from_fresh_process(second) == "done"
    assert [r.status for r in list_runs()] == ["done", "failed"]


def test_process_identity_is_pid_and_create_time(tmp_path):
    import psutil

    me = psutil.Process()
    (tmp_path / PROCESS).write_text(json.dumps(
        {"pid": me.pid, "create_time": me.create_time()}))
    assert process_alive(tmp_path)
    # the same pid with another start time: a recycled pid, not our job
    (tmp_path / PROCESS).write_text(json.dumps(
        {"pid": me.pid, "create_time": me.create_time() - 100}))
    assert not process_alive(tmp_path)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, tmp_path)
    (tmp_path / PROCESS).write_text(json.dumps(
        {"pid": zombie.pid, "create_time": psutil.Process(zombie.pid).create_time()}))
    assert not process_alive(tmp_path)  # exited, not yet reaped: dead
    zombie.wait()


# -- 4. one job per device ---------------------------------------------------------------
def test_two_starts_racing_one_wins(tiny_model_dir, saves):
    """Two processes (two browser tabs, the UI and the CLI) press Start at once."""
    code = (
        "import sys\nfrom core.jobs import runner\nfrom core.jobs.device import BusyError\n"
        "from core.schema.config import RunConfig\n"
        f"cfg = RunConfig(model={str(tiny_model_dir)!r}, dataset=['identity'], "
        "max_steps=2000, batch_size=2, cutoff_len=96)\n"
        "sys.stdin.readline()\n"  # both wait at the line, then go together
        "try:\n    print('won', runner.start(cfg))\n"
        "except BusyError as e:\n    print('busy', e)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    time.sleep(0)  # both are importing; the barrier below is stdin
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    won = [o for o in outs if o.startswith("won")]
    assert len(won) == 1 and sum(o.startswith("busy") for o in outs) == 1, outs
    run_dir = Path(won[0].split(" ", 1)[1])
    assert [p.name for p in saves.iterdir() if (p / "config.yaml").exists()] == [run_dir.name]
    runner.abort(run_dir)


def test_two_starts_racing_in_threads(tiny_model_dir, saves):
    barrier = threading.Barrier(2)
    results: list[str] = []

    def go() -> None:
        barrier.wait()
        try:
            results.append(str(runner.start(tiny(tiny_model_dir, max_steps=2000))))
        except BusyError:
            results.append("busy")

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results)[-1] == "busy" and results.count("busy") == 1, results
    runner.abort(Path(next(r for r in results if r != "busy")))


def test_comparison_queue_stops_from_the_cli(tiny_model_dir, saves):
    spec = compare.CompareSpec(methods=["lora", "ia3"], settings=tiny(
        tiny_model_dir, max_steps=2000).to_dict())
    job = compare.start(spec)
    run = wait_for(lambda: next((e["run"] for e in events_of(job) if e["type"] == "run"),
                                None), job)
    run_dir = saves / run
    wait_for(lambda: any(e["type"] == "step" for e in events_of(run_dir)), run_dir)
    out = subprocess.run([sys.executable, "-m", "core.cli", "abort", job.name], cwd=ROOT,
                         capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and f"{job.name}: aborted" in out.stdout, out.stdout + out.stderr
    assert run_status(run_dir)[0] == "aborted"
    assert (run_dir / "adapter" / "studio.json").is_file()  # what it trained is kept
    assert [r["status"] for r in compare.table(job)] == ["aborted"]  # ia3 never started
    assert active_run() is None


def test_comparison_queue_stops_from_the_ui(tiny_model_dir, saves):
    """The comparison panel's Start comparison, then its Stop comparison button."""
    from core.schema.config import SETTINGS
    from webui.tabs.train import compare as compare_panel

    values = {**{n: s.default for n, s in SETTINGS.items()},
              **tiny(tiny_model_dir, max_steps=2000).to_dict()}
    message, job = compare_panel.start(values, ["lora", "ia3"], "", 5)
    assert job, message
    job = Path(job)
    run = wait_for(lambda: next((e["run"] for e in events_of(job) if e["type"] == "run"),
                                None), job)
    run_dir = saves / run
    wait_for(lambda: any(e["type"] == "step" for e in events_of(run_dir)), run_dir)
    assert compare_panel.stop(str(job)).startswith(f"Stopping **{job.name}**")
    assert runner.wait(job, timeout=180) == "aborted"
    line, table, _ = compare_panel.view(str(job))
    assert line.startswith(f"**{job.name}**: aborted")
    assert list(table["Status"]) == ["aborted"]  # ia3 never started
    assert run_status(run_dir)[0] == "aborted"
    assert (run_dir / "adapter" / "studio.json").is_file()  # what it trained is kept
    assert compare_panel.stop(str(job)) == "No comparison is running."
    assert active_run() is None


def test_chat_waits_for_the_device_and_says_for_whom(tiny_model_dir, saves):
    client = chat.ChatClient()
    holder = hold_device("run busy-run")
    try:
        replies = client.load_events(runs.base_target(str(tiny_model_dir)))
        first = next(replies)
        assert first == {"id": 1, "type": "waiting", "holder": "run busy-run"}
        holder.close()  # the run ends: the chat goes on by itself
        assert [r["type"] for r in replies] == ["loading", "loaded"]
        # held only while loading or answering: free again right after the last reply
        wait_for(lambda: device_holder() is None, saves, timeout=30)
    finally:
        holder.close()
        client.unload()


# -- 7, 8. the app's start with a corrupt registry, behind its login, with an upload limit --
def _http(opener, url: str, data: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers or {}),
                         timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _multipart(name: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "peftstudioboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_served_app_starts_on_a_corrupt_registry_behind_its_login_and_upload_limit(
        tmp_path):
    """`peft-studio webui` as a user starts it, with a broken data/dataset_info.json, a
    login and a 1 MB upload limit: it comes up, a client without the login gets 401, and
    with it an upload over the limit is refused by the server itself (413)."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    from browser_support import serve_app

    from webui import guard

    data = tmp_path / "user-data"
    shutil.copytree(ROOT / "data", data)
    (data / "dataset_info.json").write_text('{"identity": {"file": ', encoding="utf-8")
    env = {guard.AUTH_ENV: "alice:s3cret-pw", "PEFT_STUDIO_DATA": str(data),
           "PEFT_STUDIO_MAX_UPLOAD_MB": "1"}
    with serve_app(tmp_path, env=env) as app:
        anon = urllib.request.build_opener()
        assert _http(anon, app.url + "config")[0] == 401
        assert _http(anon, app.url + "gradio_api/upload", *_multipart("a.json", b"[]"))[0] \
            == 401
        user = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        login = urllib.parse.urlencode({"username": "alice", "password": "s3cret-pw"})
        assert _http(user, app.url + "login", login.encode())[0] == 200
        status, config = _http(user, app.url + "config")
        assert status == 200 and b"Registered datasets" in config  # the whole app was built
        small = b'[{"instruction": "q", "output": "1991-03-13"}]'
        status, body = _http(user, app.url + "gradio_api/upload", *_multipart("d.json", small))
        assert status == 200 and json.loads(body)[0].endswith("d.json"), body
        status, body = _http(user, app.url + "gradio_api/upload",
                             *_multipart("big.json", b" " * (2 * 2**20)))
        assert status == 413 and b"maximum allowed size" in body, body
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log
    # The registry was left as the user had it: nothing "repaired" it behind their back.
    assert (data / "dataset_info.json").read_text() == '{"identity": {"file": '


def test_disk_full_while_adding_a_dataset_leaves_nothing(small_disk, tmp_path, monkeypatch):
    """data/ on the small disk, a 2 MB file to add: said as a full disk, with the path, and
    no partial copy is left to keep the disk full; the registry is as it was."""
    from core.data.registry import info_path, register
    from core.fsutil import DiskFull
    from webui.tabs.data import upload

    monkeypatch.setenv("PEFT_STUDIO_DATA", str(small_disk))
    rows = [{"instruction": f"question {i} " + "x" * 200, "output": "y"} for i in range(10_000)]
    big = tmp_path / "big.json"
    big.write_text(json.dumps(rows))
    with pytest.raises(DiskFull, match=r"disk full writing .*big\.json .*add the file again"):
        register("big", big, "alpaca")
    assert sorted(p.name for p in small_disk.iterdir()) == []
    assert not info_path().exists()
    said = upload.register_upload(str(big), "big", "alpaca",  # the Data tab's Add
                                  {"instruction": "instruction", "output": "output"})
    assert not said.ok and "disk full writing" in said.message
    assert sorted(p.name for p in small_disk.iterdir()) == []
