"""Datasets: the registry (registry), formats and validation (formats), their one error
(errors), file reading (reader, jsontext), loading a run's examples (loader) and
tokenizing them (encode).

Importing this package pulls in neither pyarrow nor `transformers`; pyarrow is imported
when a parquet file is read, and nothing here imports a tokenizer library itself.
"""
