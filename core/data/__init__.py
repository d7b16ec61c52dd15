"""Datasets: the registry (registry), formats and validation (formats), file reading
(reader, jsontext), loading a run's examples (loader) and tokenizing them (encode).

Importing this package pulls in neither pyarrow nor `transformers`; pyarrow is imported
when a parquet file is read, and nothing here imports a tokenizer library itself.
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
