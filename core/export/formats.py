"""Export formats as a registry: each is a writer that also verifies what it wrote (nothing
is reported exported until it was read back and compared with the model it came from),
plus what it refuses before anything is written, its model card and its summary line.
Adding a format is one module that builds a core.export.common.ExportFormat, and one
entry below."""

from __future__ import annotations

from core.export import gguf, safetensors
from core.export.common import ExportFormat

# In the order the UI offers them.
FORMATS: dict[str, ExportFormat] = {f.name: f for f in (safetensors.FORMAT, gguf.FORMAT)}
