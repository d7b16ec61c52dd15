"""core/jobs/job.py, in process: every way a job can end writes exactly one end event with a
readable error, and the terminal follower prints what a job reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.data.errors import DataError
from core.jobs import job as jobs
from core.jobs.events import EventWriter, read_events
from core.jobs.runs import DONE


@pytest.fixture()
def spec_file(tmp_path) -> Path:
    path = tmp_path / "job" / "spec.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"n": 3}))
    return path


def run(spec_file: Path, work) -> tuple[int, list[dict]]:
    code = jobs.run_job([str(spec_file)], "python -m x JOB/spec.yaml",
                        lambda p: yaml.safe_load(p.read_text()), work)
    return code, read_events(spec_file.parent)[0]


def test_done_carries_what_the_work_returned(spec_file):
    def work(spec, job, events):
        events.emit("progress", done=1, total=spec["n"], message="one")
        return {"output_dir": str(job), "rows": spec["n"]}

    code, events = run(spec_file, work)
    assert code == 0 and [e["type"] for e in events] == ["progress", "end"]
    assert events[-1] | {"time": 0} == {"type": "end", "time": 0, "status": "done",
                                        "error": None, "output_dir": str(spec_file.parent),
                                        "rows": 3}


@pytest.mark.parametrize("exc, message", [
    (ValueError("bad value"), "ValueError: bad value"),  # a library's: its type says what
    (DataError("no rows", file="x.json"), "x.json: no rows"),  # ours already says it all
    (RuntimeError(), "RuntimeError: RuntimeError"),
])
def test_a_failure_ends_failed_with_a_readable_error(spec_file, exc, message):
    def work(spec, job, events):
        raise exc

    code, events = run(spec_file, work)
    assert code == 1 and len(events) == 1
    assert (events[0]["status"], events[0]["error"]) == ("failed", message)


def test_an_interrupt_ends_aborted_and_a_work_may_say_its_own_status(spec_file):
    def interrupted(spec, job, events):
        raise KeyboardInterrupt

    code, events = run(spec_file, interrupted)
    assert code == 0 and events[-1]["status"] == "aborted"
    spec_file.with_name("events.jsonl").unlink()
    code, events = run(spec_file, lambda s, j, e: {"status": "failed", "error": "2 of 3"})
    assert code == 1 and (events[-1]["status"], events[-1]["error"]) == ("failed", "2 of 3")


def test_bad_command_line_writes_nothing(spec_file, capsys):
    assert jobs.run_job([], "python -m x JOB/spec.yaml", yaml.safe_load, dict) == 2
    assert "usage: python -m x JOB/spec.yaml" in capsys.readouterr().err
    assert not spec_file.with_name("events.jsonl").exists()


def test_follow_prints_each_reported_event_until_the_end(tmp_path, capsys):
    events = EventWriter(tmp_path)
    events.emit("progress", done=1, total=2, message="half")
    events.emit("step", step=1)  # not described: not printed
    events.emit("end", status="done", error=None)
    assert jobs.follow(tmp_path, jobs.describe_progress) == DONE
    assert capsys.readouterr().out == "[1/2] half\n"
