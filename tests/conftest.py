"""Shared fixtures. HF_HUB_OFFLINE is set before anything imports huggingface_hub, so a
missing model fails at once instead of waiting on the network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "output"


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2 converted to a safetensors folder (cached across runs)."""
    from core import models

    return Path(models.local_folder("embedded"))


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from core import models

    return models.load_tokenizer("embedded")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template: fast enough
    to train for a few steps in well under a second each."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(autouse=True)
def _tiny_model_offered(request):
    """Tests drive the browser's handlers with the tiny model, as a page may on a server
    started with --models-dir on its folder. Set per test: a test that builds the app
    with launch() resets the policy as a server start does."""
    if "tiny_model_dir" not in request.fixturenames:
        yield
        return
    from webui import guard

    folder = request.getfixturevalue("tiny_model_dir").parent
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guard.POLICY, "models_dirs", (*guard.POLICY.models_dirs, folder))
        yield


@pytest.fixture()
def saves(tmp_path, monkeypatch) -> Path:
    """An empty saves/ folder for one test (the runner and CLI honour PEFT_STUDIO_SAVES)."""
    path = tmp_path / "saves"
    path.mkdir()
    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(path))
    return path


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


@pytest.fixture()
def data(tmp_path, monkeypatch) -> Path:
    """A private copy of data/ (the registry writes dataset_info.json)."""
    path = tmp_path / "data"
    shutil.copytree(ROOT / "data", path)
    monkeypatch.setenv("PEFT_STUDIO_DATA", str(path))
    return path


@pytest.fixture(scope="session")
def code_run(tiny_model_dir, tmp_path_factory) -> Path:
    """The code-word run (tests/support.py), trained once per session and shared by the
    chat, evaluate, export and browser tests: starting processes is most of their time on
    a small machine."""
    from support import train_code_word_run

    saves = tmp_path_factory.mktemp("code-word") / "saves"
    saves.mkdir()
    return train_code_word_run(tiny_model_dir, saves)


@pytest.fixture(scope="module")
def module_saves(tmp_path_factory) -> Path:
    """An empty saves/ folder shared by one test module."""
    saves = tmp_path_factory.mktemp("module") / "saves"
    saves.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFT_STUDIO_SAVES", str(saves))
        yield saves


@pytest.fixture()
def app(tmp_path, tiny_model_dir):
    """The app served with its own data/ and saves/ for a browser test (skipped without
    Chromium), with the tiny model's folder as a --models-dir. A run still going
    afterwards is aborted: a failed test must not leave one training beside the next, and
    a passing test's runs must have ended on their own."""
    from browser_support import CHROMIUM, serve_app

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (make browser installs it)")
    with serve_app(tmp_path, args=("--models-dir", str(tiny_model_dir.parent))) as served:
        yield served
    from core.jobs import runner
    from core.jobs.process import process_alive

    for run_dir in served.saves.iterdir():
        if (run_dir / "config.yaml").exists() and process_alive(run_dir):
            runner.abort(run_dir, timeout=10)



def pytest_collection_modifyitems(config, items):
    """The modules with real-model or browser tests first, so that under `make test`'s two
    workers the long ones do not start last and leave one worker idle at the end."""
    heavy = {item.nodeid.split("::")[0] for item in items
             if item.get_closest_marker("slow") or item.get_closest_marker("browser")}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (item.nodeid.split("::")[0] not in heavy, order[id(item)]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """How `make test`'s two pytest-xdist workers share the suite: each module is one unit
    of work, so its module-scoped fixtures are built once, and the browser modules
    (test_browser*.py) are one unit, so two Chromiums and two app servers never compete for
    the two cores. Units go out in collection order. (xdist's own loadgroup marks do not
    reach its scheduler under pytest 9.2, which no longer reads the node id they rewrite.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "browser" if Path(module).name.startswith("test_browser") else module

    return ModuleScheduling(config, log)
