"""Benchmark: reading a big upload the way the Data tab does.

Writes an alpaca file of about --mb megabytes (jsonl, json or csv), then, each in a fresh
process, times and measures the peak resident memory (RSS) of: inspecting it (columns,
row count, 5 sample rows), validating every row, and reading all rows (what training
does). Not a test: numbers depend on the machine.
Usage: `python bench/data_reading.py [--mb 100] [--suffix .jsonl]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEPS = {
    "inspect": "from webui.tabs.data.upload import inspect_upload; "
                "r = inspect_upload(PATH); n = r.rows",
    "validate": "from core.data.formats import validate_file; "
                "p = validate_file(PATH, 'alpaca'); assert not p, p[:3]; n = -1",
    "read all": "from core.data.reader import read_rows; n = len(read_rows(PATH)[0])",
}
MEASURE = """
import resource, sys, time
sys.path.insert(0, {root!r})
PATH = {path!r}
import pandas, core.data.formats, core.data.reader  # imports are not the file's cost
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
{step}
took = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{{took:.2f}} {{base / 1024:.0f}} {{peak / 1024:.0f}} {{n}}")
"""


def write(path: Path, megabytes: int) -> int:
    row = {"instruction": "Convert this date to ISO 8601 format. " * 4,
           "input": "March 13, 1991 — ünïcödé " * 4, "output": "1991-03-13"}
    size = len(json.dumps(row, ensure_ascii=False).encode()) + 1
    count = megabytes * 2**20 // size
    line = json.dumps(row, ensure_ascii=False)
    # Written row by row: a big string here would count in the children's peak RSS too
    # (Linux carries ru_maxrss across fork and exec).
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            out = csv.writer(f)
            out.writerow(row)
            for _ in range(count):
                out.writerow(row.values())
        elif path.suffix == ".json":
            f.write("[\n" + line)
            for _ in range(count - 1):
                f.write(",\n" + line)
            f.write("\n]\n")
        else:
            for _ in range(count):
                f.write(line + "\n")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--suffix", default=".jsonl", choices=[".jsonl", ".json", ".csv"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"big{args.suffix}"
        count = write(path, args.mb)
        print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MiB, {count} rows")
        for name, step in STEPS.items():
            code = MEASURE.format(root=str(ROOT), path=str(path), step=step)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.split()
            took, base, peak, n = out
            print(f"  {name:9} {float(took):6.2f} s   peak RSS {peak:>5} MiB "
                  f"(+{int(peak) - int(base)} MiB over the imports)   rows {n}")


if __name__ == "__main__":
    main()
