"""Export: a merged model that plain transformers loads with the adapter's logits, shard
sizes, refused names, no silent overwrite, adapter-only for methods that cannot merge,
and resharding of whole-model runs. Every run is a real tiny run through the runner."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from support import ANSWER, PROMPT

from core.export import job as ex
from core.export import safetensors
from core.jobs import runner
from core.methods import METHODS
from core.schema.config import RunConfig


@pytest.fixture()
def lora_run(code_run, module_saves) -> Path:
    return code_run


def quick_run(tiny_model_dir: Path, saves: Path, **kw) -> Path:
    settings = dict(model=str(tiny_model_dir), dataset=["identity"], max_steps=2,
                    batch_size=2, gradient_accumulation_steps=1, cutoff_len=64,
                    logging_steps=1, learning_rate=1e-3)
    run_dir = runner.start(RunConfig(**{**settings, **kw}), saves)
    assert runner.wait(run_dir, timeout=600) == "done", (run_dir / "log.txt").read_text()
    return run_dir


def run_export(run_dir: Path, name: str, **kw) -> dict:
    job = ex.start(ex.ExportSpec(str(run_dir), name, **kw))
    assert job.parent == run_dir / "exports"
    deadline = time.time() + 600
    while (state := ex.job_state(job))["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.3)
    assert state["status"] == "done", (job / "log.txt").read_text()[-3000:]
    return state["end"]


def probe_logits(model, tokenizer):
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.inference_mode():
        return model(**ids).logits


def test_merged_export_loads_with_plain_transformers_and_matches(lora_run, module_saves):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.methods.result import load_trained

    end = run_export(lora_run, "code-merged")
    out = Path(end["output_dir"])
    assert out == module_saves / "exports" / "code-merged"
    assert end["plan"] == "merge" and end["max_abs_diff"] < 1e-4
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md",
            "chat_template.jinja"} <= names
    assert not any(n.startswith("adapter") for n in names)
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp left

    # Checked here again, independently of the job's own check.
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    adapter_model, _ = load_trained(lora_run / "adapter")
    diff = (probe_logits(merged, tokenizer) - probe_logits(adapter_model.eval(), tokenizer))
    assert float(diff.abs().max()) < 1e-4
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    new = merged.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert tokenizer.decode(new, skip_special_tokens=True) == ANSWER

    card = (out / "README.md").read_text()
    assert lora_run.name in card and "learning_rate" in card and "final training loss" in card
    assert "AutoModelForCausalLM.from_pretrained" in card
    assert ex.past_exports(lora_run)[0]["end"]["output_dir"] == str(out)  # newest first


def test_full_run_is_resharded_within_the_max_shard_size(tiny_model_dir, module_saves):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    run_dir = quick_run(tiny_model_dir, module_saves, method="full", learning_rate=1e-5)
    # In-process: the job's subprocess plumbing is covered by the other exports.
    end = ex.export(ex.ExportSpec(str(run_dir), "full-sharded", max_shard_size="100KB"),
                    ex.EventWriter(module_saves))
    out = Path(end["output_dir"])
    assert end["plan"] == "full" and end["max_abs_diff"] < 1e-5
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) >= 3 and len(shards) == len(end["shards"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    for shard in shards:
        if shard.stat().st_size > 100_000:
            # transformers cannot split one tensor: only a lone oversized tensor may exceed.
            with safe_open(str(shard), "pt") as f:
                assert len(list(f.keys())) == 1, shard.name
    AutoModelForCausalLM.from_pretrained(str(out))  # loads from the shards


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "", ".hidden", "..", "x" * 101,
                                  "a b"])
def test_names_that_leave_the_exports_folder_are_refused(lora_run, module_saves, name):
    jobs_before = sorted((lora_run / "exports").glob("*"))
    with pytest.raises(ex.ExportError, match="not allowed"):
        ex.start(ex.ExportSpec(str(lora_run), name))
    assert sorted((lora_run / "exports").glob("*")) == jobs_before  # nothing started
    assert not (module_saves / "x").exists() and not Path("/abs").exists()


def test_cli_exports_anywhere_and_an_occupied_folder_needs_overwrite(lora_run, module_saves,
                                                                     tmp_path, capsys):
    """The person at the terminal owns the disk: `--out PATH` may be any folder (a page
    can still only name an export in saves/exports, see the test above). A folder with
    files in it is replaced only with --overwrite, and only if it is a model folder."""
    from core.cli.main import main

    out = tmp_path / "anywhere" / "merged"
    assert main(["export", str(lora_run), "--out", str(out), "--adapter-only"]) == 0, \
        capsys.readouterr().err
    assert (out / "adapter_config.json").is_file() and (out / "README.md").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left
    before = sorted(p.name for p in out.iterdir())
    assert main(["export", str(lora_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty; pass --overwrite" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == before
    ex.check(ex.ExportSpec(str(lora_run), out.name, overwrite=True, out=str(out)))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert main(["export", str(lora_run), "--out", str(notes), "--overwrite"]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "mine"
    for holder in (lora_run, lora_run.parent):  # replacing it would delete the run
        assert main(["export", str(lora_run), "--out", str(holder), "--overwrite"]) == 2
        assert "choose a folder of its own" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    ex.check(ex.ExportSpec(str(lora_run), "empty", out=str(tmp_path / "empty")))
    assert ex.target_of_out("mine") == ("mine", "")  # a bare name: saves/exports/mine
    assert ex.target_of_out(str(ex.exports_dir() / "mine")) == ("mine", "")
    with pytest.raises(ex.ExportError):
        ex.parse_size("lots")


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MB tmpfs: room for a README, not for the tiny model (12 MB of embeddings)."""
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({mounted.stderr.strip()})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_disk_full_while_exporting_says_so_and_leaves_nothing(lora_run, small_disk, capsys,
                                                              fmt):
    from core.cli.main import main

    out = small_disk / "merged"
    assert main(["export", str(lora_run), "--out", str(out), "--format", fmt]) == 1
    err = capsys.readouterr().err
    assert f"failed: disk full writing {out} (" in err and " MB free): free some space" in err
    assert "and export again" in err and "Errno" not in err
    assert list(small_disk.iterdir()) == []  # no half model keeps the disk full


def test_existing_export_is_never_overwritten_without_the_flag(lora_run, module_saves,
                                                               monkeypatch):
    existing = module_saves / "exports" / "taken"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ex.ExportError, match="already exists"):
        ex.start(ex.ExportSpec(str(lora_run), "taken"))
    assert (existing / "keep.txt").read_text() == "mine"

    # With the flag, a failure half-way still loses nothing (the job writes to a temp
    # folder and swaps it in only at the end).
    def broken(*args, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors, "write_adapter", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ex.export(ex.ExportSpec(str(lora_run), "taken", adapter_only=True, overwrite=True),
                  ex.EventWriter(module_saves))
    assert (existing / "keep.txt").read_text() == "mine"
    assert not [p for p in existing.parent.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()

    end = ex.export(ex.ExportSpec(str(lora_run), "taken", adapter_only=True, overwrite=True),
                    ex.EventWriter(module_saves))
    assert not (existing / "keep.txt").exists()
    assert (existing / "adapter_config.json").is_file() and end["plan"] == "adapter"
    assert not [p for p in existing.parent.iterdir() if p.name.startswith(".")]


def test_method_that_cannot_merge_exports_its_adapter_with_the_reason(tiny_model_dir,
                                                                       module_saves):
    from core.jobs.runs import checkpoints
    from core.methods.result import load_trained

    reason = METHODS["prompt"].not_mergeable_reason
    assert reason and ex.plan("prompt", False) == ("adapter", reason)
    run_dir = quick_run(tiny_model_dir, module_saves, method="prompt", num_virtual_tokens=4)
    out, how, why = ex.check(ex.ExportSpec(str(run_dir), "soft-prompt"))
    assert (how, why) == ("adapter", reason)
    end = run_export(run_dir, "soft-prompt")
    assert end["plan"] == "adapter" and end["why"] == reason and end["max_abs_diff"] == 0
    assert (out / "adapter_config.json").is_file() and (out / "studio.json").is_file()
    assert reason in (out / "README.md").read_text()
    model, _ = load_trained(out)  # the exported folder loads like the run's own result
    assert model.peft_config["default"].num_virtual_tokens == 4
    assert "final" in checkpoints(run_dir)
    from webui.tabs.export.handlers import plan_text

    assert reason in plan_text(run_dir.name, "final", False, "en")
