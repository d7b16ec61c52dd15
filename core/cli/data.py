"""`peft-studio data check|import`: a dataset's full check, and importing LLaMA-Factory's
data folder into the studio's registry."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core.data.errors import DataError
from core.stages import STAGES


def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="check a dataset, or import LLaMA-Factory's "
                              "data folder")
    sub = p.add_subparsers(dest="data_command", required=True)
    c = sub.add_parser("check", help="format, rows, unused columns and every bad row; exit "
                       "1 when it cannot train")
    c.add_argument("dataset", help="a registered name or a file path")
    c.add_argument("--stage", choices=list(STAGES), help="also check that this stage "
                   "trains on its format")
    c.add_argument("--limit", type=int, default=20, help="problems shown (the rest counted)")
    c.add_argument("--keep-good", metavar="NAME", help="when some rows are bad, register a "
                   "copy without them under data/ as NAME, saying which rows were left out")
    c.set_defaults(func=_check)
    i = sub.add_parser("import", help="register every entry of a LLaMA-Factory "
                       "dataset_info.json that can train; one line per entry")
    i.add_argument("folder", help="the folder holding its dataset_info.json and files")
    i.set_defaults(func=_import)


def _check(args: argparse.Namespace) -> int:
    from core.data.check import check_dataset

    report = check_dataset(args.dataset, args.stage)
    print("\n".join(report.lines(args.limit)))
    bad_rows = {p.row for p in report.problems}
    if not args.keep_good or report.ok or report.format is None:
        if not report.ok and bad_rows and None not in bad_rows:
            print(f"note: --keep-good NAME registers a copy without the {len(bad_rows)} "
                  "bad rows", file=sys.stderr)
        return 0 if report.ok else 1
    from core.data.good_rows import register_good_rows

    try:
        kept = register_good_rows(args.keep_good, report.file, report.format, report.mapping,
                                  report.problems, report.text_split)
    except DataError as exc:
        print(f"error: nothing registered: {exc}", file=sys.stderr)
        return 1
    print("\n".join(kept.lines()))
    return 0


def _import(args: argparse.Namespace) -> int:
    from core.data.importer import import_llamafactory

    try:
        outcomes = import_llamafactory(args.folder)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for outcome in outcomes:
        print(outcome.line)
    done = sum(o.name is not None for o in outcomes)
    print(f"{done} of {len(outcomes)} entries registered")
    return 0 if done else 1


def check_before_training(datasets: list[str], stage: str) -> list[str]:
    """Every dataset's full check, as lines to print; empty when all can train."""
    from core.data.check import before_training

    return before_training(datasets, stage)
