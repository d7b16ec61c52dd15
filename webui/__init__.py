"""The browser app (Gradio). `webui.app.build_app()` builds it, `webui.app.launch()` serves it.

This package's own __init__ imports nothing, so `python -m webui.probe` (the helper that
imports torch) starts without pulling in Gradio, and the app starts without torch.
"""
