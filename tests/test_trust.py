"""Trust, part 2: what a page may name as a model (over HTTP, on the served app), where the
CLI may export, over-long chat prompts, the data preview of a huge row, a full disk in
export, and the upload quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.cli.main import main
from tests.browser_support import serve_app
from webui import guard

ROOT = Path(__file__).resolve().parent.parent


def _values(**changes):
    from core.schema.config import SETTINGS

    values = {n: (list(s.default) if isinstance(s.default, list) else s.default)
              for n, s in SETTINGS.items()}
    return {**values, **changes}


# -- 1. the browser's model box -----------------------------------------------------------
REFUSED_MODELS = ("/etc", "/no/such/folder", "../x", "~/.cache/huggingface", "core/chat")


def test_page_names_only_embedded_hub_ids_or_models_dir_folders(tmp_path):
    """Over HTTP, as a page would ask it: the model box's description of a server path
    outside --models-dir is a refusal that says how to allow it, worded the same whether
    the path exists or not; inside it, and hub ids and 'embedded', are described."""
    from gradio_client import Client

    models = tmp_path / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text('{"model_type": "llama"}')
    with serve_app(tmp_path, args=("--models-dir", str(models))) as app:
        client = Client(app.url, verbose=False)

        def describe(model: str) -> str:
            return client.predict(model, "en", api_name="/describe_model")

        outside = [*REFUSED_MODELS, str(tmp_path / "outside"), f"{models}/../outside"]
        said = {m: describe(m) for m in outside}
        for model, text in said.items():
            assert text.startswith("✗") and "--models-dir DIR" in text, (model, text)
            # The same words for a folder that exists and one that does not.
            assert text.replace(repr(model), "") == \
                said["/no/such/folder"].replace(repr("/no/such/folder"), ""), model
        assert "Local folder **tiny**" in describe(str(models / "tiny"))
        assert "Hub id **Qwen/Qwen2.5-0.5B-Instruct**" in describe("Qwen/Qwen2.5-0.5B-Instruct")
        assert "Bundled" in describe("embedded")
        # The model box offers the folders of the models directory.
        config = client.config
        box = next(c for c in config["components"]
                   if c.get("props", {}).get("elem_id") == "setting-model")
        assert [str(models / "tiny")] * 2 in box["props"]["choices"]
    assert not any((app.saves).iterdir())


@pytest.mark.parametrize("model", REFUSED_MODELS)
def test_runs_chat_and_preview_refuse_a_server_path_from_the_page(saves, data, monkeypatch,
                                                                  model):
    from webui.tabs.chat import handlers as chat
    from webui.tabs.data import view
    from webui.tabs.train import handlers as training

    monkeypatch.setattr(guard.POLICY, "models_dirs", ())
    started = training.start(_values(model=model))
    assert started.run_dir is None and "--models-dir" in started.message
    assert not any(saves.iterdir())
    with pytest.raises(Exception, match="--models-dir"):
        training.inspect_payload(_values(model=model))
    with pytest.raises(ValueError, match="--models-dir"):
        chat.targets(model, chat.BASE_ONLY, "final", False, chat.NONE)
    with pytest.raises(ValueError, match="--models-dir"):
        view.model_view(model, "identity", 1, 1024, False)


def test_models_dir_folders_are_the_pages_and_the_cli_names_any(saves, data, tmp_path,
                                                                monkeypatch, capsys):
    from webui.tabs.train import handlers as training

    folder = tmp_path / "models" / "mine"
    monkeypatch.setattr(guard.POLICY, "models_dirs", (tmp_path / "models",))
    for model in (str(folder), "embedded", "", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert guard.browser_model_problem(model) is None, model
        _, _, problems = training.preview(_values(model=model or "embedded"))
        assert "model:" not in problems, (model, problems)
    assert guard.browser_model_problem(str(tmp_path / "models")) is not None  # the dir itself
    assert main(["train", "--model", "/etc", "--print-config"]) == 0
    assert "model: /etc" in capsys.readouterr().out
