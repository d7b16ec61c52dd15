"""The full check of one dataset before anything trains on it: its format, rows, the
columns it would leave unused and every bad row. `peft-studio data check` prints it and
`peft-studio train` runs it before a run folder exists, so a bad file leaves no failed
run behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.data.errors import DataError
from core.data.folders import is_dataset_folder
from core.data.formats import column_map, detect_format, validate_file
from core.data.reader import scan
from core.data.registry import read_registry, resolve
from core.stages import format_problem


@dataclass
class Report:
    dataset: str
    file: Path | None = None
    format: str | None = None
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    note: str = ""
    problems: list[DataError] = field(default_factory=list)
    stage_problem: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)  # format role -> column
    text_split: str = "paragraph"

    @property
    def ok(self) -> bool:
        return self.format is not None and not self.problems and not self.stage_problem

    def lines(self, limit: int = 20) -> list[str]:
        """The report as a terminal shows it: every problem by row, the first `limit`."""
        shown = f" ({self.file})" if self.file and str(self.file) != self.dataset else ""
        out = [f"dataset: {self.dataset}{shown}"]
        if self.format:
            out.append(f"format: {self.format}" + (f" ({self.note})" if self.note else ""))
            out.append(f"rows: {self.rows}")
        if self.unused:
            out.append(f"unused columns: {', '.join(self.unused)}")
        for problem in self.problems[:limit]:
            out.append(f"problem: {problem}")
        if len(self.problems) > limit:
            out.append(f"... and {len(self.problems) - limit} more problems "
                       f"({len(self.problems)} in all)")
        if self.stage_problem:
            out.append(f"problem: {self.stage_problem}")
        out.append("ok: it can train" if self.ok else "not ok: it cannot train as it is")
        return out


def check_dataset(dataset: str, stage: str | None = None) -> Report:
    """Everything wrong with `dataset` (a registered name or a file path), read once
    whole; with `stage`, also whether that stage trains on its format."""
    report = Report(dataset)
    reg = read_registry()
    path = Path(dataset).expanduser()
    try:
        if dataset in reg.entries or not (path.is_file() or is_dataset_folder(path)):
            entry = resolve(dataset)  # a name: its registered format and columns
            report.file, report.format, mapping = entry.path, entry.format, entry.columns
            split = entry.text_split
        else:
            report.file, split = path, "paragraph"
            mapping = _detected(report, path)
            if report.format is None:
                return report
        report.mapping, report.text_split = dict(mapping or {}), split
        found = scan(report.file, 0, 0, split)
    except DataError as exc:
        report.problems.append(exc)
        return report
    report.rows, report.columns = found.total, found.columns
    used = set(column_map(report.format, mapping).values())
    report.unused = report.unused or [c for c in found.columns if c not in used]
    if not report.problems:
        report.problems = validate_file(report.file, report.format, mapping, split)
    if stage:
        report.stage_problem = format_problem(stage, dataset, report.format)
    return report


def _detected(report: Report, path: Path) -> dict[str, str]:
    """The detected format of an unregistered file (a column it would leave unused that
    carries meaning, a label or media, is a problem of validate_file's)."""
    found = detect_format(scan(path, 0, 0).columns)
    report.format, report.note, report.unused = found.format, found.note, list(found.unused)
    if found.format is None:
        report.problems.append(DataError(f"cannot tell the format from its columns: "
                                         f"{found.note}", file=path))
    return found.columns


def before_training(datasets: list[str], stage: str) -> list[str]:
    """Every dataset's full check, as the lines of the reports of those that cannot train
    (empty when all can): `peft-studio train` and the Train tab's Start say them before a
    run folder exists."""
    out: list[str] = []
    for name in datasets:
        report = check_dataset(name, stage)
        if not report.ok:
            out += report.lines()
    return out
