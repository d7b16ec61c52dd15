"""Serving runs to other programs over an OpenAI-compatible HTTP API: `peft-studio serve`
and the Chat tab's Serve panel. `job.py` is the serving job (a folder under
saves/serving/, a process, events), `app.py` the HTTP app and the scheduler that answers
through the Chat tab's engine (core/chat/engine.py), `protocol.py` OpenAI's shapes,
`hosts.py` which Host names and Origins a server answers, `cli.py` the subcommand."""
