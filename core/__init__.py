"""PEFT Studio engine: run settings, data, methods, the training subprocess and its runner.

Nothing imported at package level may pull in torch or transformers: the web UI imports
this package at start-up and must stay light.
"""
