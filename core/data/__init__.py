"""Datasets: the registry (registry), formats and validation (formats), file reading
(reader), loading a run's examples (loader) and tokenizing them (encode).

Importing this package pulls in neither `datasets` nor `transformers`; they are imported
when a file is read or a tokenizer is passed in.
"""

from core.data.formats import (
    FORMATS,
    DataError,
    Detection,
    detect_format,
    to_example,
    validate_file,
)
from core.data.registry import DatasetEntry, load_info, register, resolve

__all__ = [
    "FORMATS",
    "DataError",
    "DatasetEntry",
    "Detection",
    "detect_format",
    "load_info",
    "register",
    "resolve",
    "to_example",
    "validate_file",
]
