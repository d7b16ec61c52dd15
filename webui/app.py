"""PEFT Studio's browser app: the top bar and the tabs.

`build_app()` builds the Blocks; `launch()` serves it (`peft-studio webui`, `make run`).
The app only reads and writes files and starts subprocesses: training runs detached
(core.jobs.runner), and anything that needs torch runs in a short helper (webui.probe), so the
page is up in a few seconds and closing it never touches a run.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from webui import guard, idle, quota, topbar, trust
from webui.i18n import I18n
from webui.tabs.data import upload

# (module under webui.tabs, English title, Chinese title), in display order.
TABS = (
    ("data", "Data", "数据"),
    ("train", "Train", "训练"),
    ("evaluate", "Evaluate", "评估"),
    ("chat", "Chat", "对话"),
    ("export", "Export", "导出"),
)

CSS = """
.ps-header h1 { margin: 0; font-size: 1.5rem; }
.ps-header p { margin: 0; opacity: .75; }
.ps-note { font-size: .9rem; }
/* Gradio groups consecutive form fields in one .form box: lay them out two a row. */
.ps-grid .form { flex-wrap: wrap !important; }
.ps-grid .form > .block { flex: 1 1 calc(50% - 16px) !important; min-width: 240px !important; }
.ps-progress { margin: 4px 0 8px; }
.ps-bar { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.ps-fill { height: 100%; background: var(--color-accent); transition: width .5s; }
.ps-done .ps-fill { background: #2da44e; }
.ps-failed .ps-fill { background: #e5484d; }
.ps-aborted .ps-fill { background: #bf8700; }
/* The plot's floating label would cover the figure's top-left corner. */
.ps-plot { padding-top: 34px !important; }
.ps-detail { font-size: .85rem; margin-top: 4px; opacity: .85; }
/* webui.live.panel: the live run's numbers, curves and log, drawn by the page. */
.ps-stats { font-size: .9rem; margin: 6px 0; }
.ps-stats p { margin: 4px 0; }
.ps-chart-box, .ps-log { border: 1px solid var(--border-color-primary); border-radius: 8px;
  padding: 6px 8px; margin: 8px 0; background: var(--block-background-fill); }
.ps-box-title { font-size: .8rem; font-weight: 600; opacity: .8; margin-bottom: 2px; }
.ps-chart { width: 100%; height: auto; display: block; font: 11px sans-serif; }
.ps-chart text { fill: var(--body-text-color); }
.ps-chart-grid line { stroke: var(--body-text-color); stroke-opacity: .12; }
.ps-chart-frame { fill: none; stroke: var(--body-text-color); stroke-opacity: .35; }
.ps-chart-rule { stroke: #888; stroke-dasharray: 2 3; }
.ps-chart-legend rect { fill: var(--block-background-fill); fill-opacity: .85;
  stroke: var(--body-text-color); stroke-opacity: .2; }
.ps-chart-empty { opacity: .6; font-size: 13px; }
.ps-log pre { height: 13em; overflow: auto; margin: 0; font-size: .75rem;
  white-space: pre-wrap; word-break: break-all; }
/* webui.live.wake: a script, nothing to see. */
.ps-wake { display: none !important; }
"""


# Uploaded files are kept in Gradio's cache only until registered (the registry copies
# them into data/): every hour, files older than an hour go, so uploads cannot fill the disk.
DELETE_UPLOADS = (3600, 3600)  # (how often, how old), seconds


def build_app() -> gr.Blocks:
    i18n = I18n()
    with gr.Blocks(title="PEFT Studio", delete_cache=DELETE_UPLOADS) as demo:
        header = gr.Markdown("# PEFT Studio\nParameter-efficient fine-tuning of language "
                             "models, without code.", elem_classes="ps-header")
        i18n.add(header, "# PEFT Studio\nParameter-efficient fine-tuning of language models, "
                 "without code.", "# PEFT Studio\n无需编程的大语言模型参数高效微调。")
        shared = topbar.build(i18n, demo)
        with gr.Tabs():
            for name, en, zh in TABS:
                with i18n.add(gr.Tab(en, id=name), en, zh):
                    importlib.import_module(f"webui.tabs.{name}").build(shared)
        # Last, so that every tab's components are registered.
        shared.lang.change(i18n.updates, shared.lang, i18n.components, show_progress="hidden")
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           logins: list[tuple[str, str]] | None = None,
           allow_remote_code: bool = False, allow_multi_node: bool = False,
           allowed_hosts: tuple[str, ...] = (),
           allowed_origins: tuple[str, ...] = (),
           models_dirs: tuple[Path, ...] = ()) -> None:
    """Serve the app. With `logins`, Gradio's login guards every page and API route
    (a client without the session cookie gets 401); without, only loopback is allowed.
    Requests for other Host names or from other pages' origins are refused (webui.trust)."""
    # A share link is a public address on gradio.live, whatever the host: it needs a login.
    guard.check_serving("a public share link" if share else host, logins)
    guard.POLICY.allow_remote_code = allow_remote_code
    guard.POLICY.allow_multi_node = allow_multi_node
    guard.POLICY.models_dirs = tuple(models_dirs)
    demo = build_app()
    demo.queue(default_concurrency_limit=4)
    idle.poll_gently(demo)
    demo.launch(server_name=host, server_port=port, share=share, css=CSS,
                theme=gr.themes.Soft(), footer_links=["gradio", "settings"],
                run_history=False, show_error=True, auth=logins or None,
                auth_message="PEFT Studio: log in with a user:password the server was "
                             "started with.",
                max_file_size=upload.max_upload_mb() * 2**20,
                app_kwargs={"middleware": [
                    Middleware(trust.TrustMiddleware, trust=trust.Trust(
                        host, tuple(allowed_hosts), tuple(allowed_origins), share,
                        login=bool(logins))),
                    Middleware(quota.UploadQuota, folder=get_upload_folder(),
                               quota=quota.quota_mb() * 2**20),
                    Middleware(idle.early_script_middleware)]})
