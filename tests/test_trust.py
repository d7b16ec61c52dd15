"""Trust, part 2: what a page may name as a model (over HTTP, on the served app), where the
CLI may export, over-long chat prompts, the data preview of a huge row, a full disk in
export, and the upload quota."""

from __future__ import annotations

import json
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
REFUSED_MODELS = ("/etc", "/no/such/folder", "../x", "~/.cache/huggingface", "core/chat",
                  "/etc\x00x", "~nosuchuser/x", "/" + "x" * 5000)


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
            assert text.split(" is not a model ", 1)[1] == \
                said["/no/such/folder"].split(" is not a model ", 1)[1], model
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


# -- 4. the data preview of a huge row ----------------------------------------------------
def test_preview_of_a_ten_million_character_row_tokenizes_only_what_the_cut_off_shows(
        tiny_model_dir, tokenizer, data):
    """"What the model sees" on a row of 10 million characters with cut-off 1024: it says
    the row was cut, and shows at most 1024 tokens (it used to tokenize all 5 million)."""
    import time

    from webui.tabs.data import view

    rows = [{"instruction": "word " * 2_000_000, "output": "short"},
            {"instruction": "What is 2 + 2?", "output": "4"}]
    (data / "huge.json").write_text(json.dumps(rows))
    t0 = time.time()
    seen = view.model_view(str(tiny_model_dir), str(data / "huge.json"), 1, 1024, False)
    seconds = time.time() - t0
    assert "✂ this sample was cut: only its first 32,768 characters" in seen.summary
    assert "**1** cut at 1024" in seen.summary
    shown = "".join(text for text, _ in seen.segments)
    assert len(tokenizer(shown, add_special_tokens=False)["input_ids"]) <= 1024
    assert shown.startswith("<|im_start|>") and len(shown) < 32_768
    other = view.model_view(str(tiny_model_dir), str(data / "huge.json"), 2, 1024, False)
    assert "1 sample(s) longer than 32,768 characters were cut" in other.summary
    assert "4" in "".join(t for t, label in other.segments if label == view.TRAINED)
    print(f"preview of a 10-million-character row: {seconds:.1f} s")  # was 81 s


# -- 6. the upload quota ------------------------------------------------------------------
def _upload(url: str, name: str, content: bytes) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    body = (f"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n--b--\r\n"
    request = urllib.request.Request(url + "gradio_api/upload", data=body, headers={
        "Content-Type": "multipart/form-data; boundary=b"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_uploads_stop_at_the_quota_with_a_message(tmp_path):
    """A 1 MB quota: the first upload is stored, the one that would pass the quota is
    refused with what to do, and nothing of it is written."""
    cache = tmp_path / "upload-cache"
    env = {"GRADIO_TEMP_DIR": str(cache), "PEFT_STUDIO_UPLOAD_QUOTA_MB": "1"}
    with serve_app(tmp_path, env=env) as app:
        status, body = _upload(app.url, "a.json", b"[" + b" " * 600_000 + b"]")
        assert status == 200, body
        from webui.quota import folder_bytes

        stored = folder_bytes(cache)
        assert stored >= 600_000
        status, body = _upload(app.url, "b.json", b"[" + b" " * 600_000 + b"]")
        assert status == 413
        error = json.loads(body)["error"]
        assert "the upload space is full" in error and "PEFT_STUDIO_UPLOAD_QUOTA_MB" in error
        assert "deleted once added as a dataset" in error
        assert folder_bytes(cache) == stored
        assert _upload(app.url, "c.json", b"[" + b" " * 100_000 + b"]")[0] == 200  # it fits
    assert "Traceback" not in (tmp_path / "server.log").read_text()
