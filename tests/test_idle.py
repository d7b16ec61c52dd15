"""webui.idle: what keeps an idle app from taking CPU from the trainer."""

from __future__ import annotations

import gradio as gr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from webui import idle


def test_the_queue_polls_gently_when_it_has_nothing_to_do():
    with gr.Blocks() as demo:
        gr.Markdown("x")
    demo.queue()
    idle.poll_gently(demo)
    # If a gradio upgrade renames these, this fails instead of the server quietly going
    # back to polling every millisecond.
    assert demo._queue.sleep_when_free == idle.QUEUE_POLL_S
    assert demo._queue.progress_update_sleep_when_free == idle.PROGRESS_POLL_S


def _client() -> TestClient:
    page = "<!doctype html><html><head><meta charset='utf-8'><script src='app.js'></script>" \
           "</head><body>hé</body></html>"
    app = Starlette(routes=[Route("/", lambda r: HTMLResponse(page)),
                            Route("/config", lambda r: JSONResponse({"head": "<head>"}))],
                    middleware=[Middleware(idle.early_script_middleware)])
    return TestClient(app)


def test_the_early_script_comes_first_in_every_page():
    response = _client().get("/")
    assert response.status_code == 200
    assert response.text.index(idle.EARLY_SCRIPT) == response.text.index("<head>") + 6
    assert response.text.index(idle.EARLY_SCRIPT) < response.text.index("app.js")
    assert response.text.count("<script>") == 1 and response.text.endswith("hé</body></html>")
    assert int(response.headers["content-length"]) == len(response.content)


def test_what_is_not_a_page_passes_untouched():
    response = _client().get("/config")
    assert response.json() == {"head": "<head>"}


def test_the_served_app_has_the_early_script(tmp_path):
    import urllib.request

    from browser_support import serve_app

    with serve_app(tmp_path) as app:
        page = urllib.request.urlopen(app.url).read().decode()
    head = page.index("<head>")
    assert page.index(idle.EARLY_SCRIPT) == head + len("<head>")
    assert page.index(idle.EARLY_SCRIPT) < page.index("<script type=\"module\"")
