"""tests/architecture.py: the rules hold for this tree, and each rule catches what it names."""

from __future__ import annotations

from pathlib import Path

import architecture


def test_the_codebase_keeps_its_architecture():
    assert architecture.problems() == []


def _tree(root: Path, files: dict[str, str], mapped: tuple[str, ...]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "docs").mkdir()
    (root / "docs" / "architecture.md").write_text(" ".join(f"`{m}`" for m in mapped))
    return root


def test_each_rule_catches_what_it_names(tmp_path):
    long_body = "\n".join(f"    x{i} = {i}" for i in range(architecture.MAX_FUNCTION_LINES))
    root = _tree(tmp_path, {
        "core/__init__.py": "",
        "webui/__init__.py": "",
        "core/jobs/__init__.py": "",
        "core/jobs/a.py": "def f():\n    from core.jobs import b\n",
        "core/jobs/b.py": "from core.jobs.a import f\n",
        "core/jobs/c.py": "from core.jobs.b import _hidden\n",
        "core/gone/__init__.py": "",
        "webui/long.py": f"def big():\n{long_body}\n",
    }, mapped=("core/", "webui/", "core/jobs/", "core/ghost/"))
    found = architecture.problems(root)
    assert "import circle: core.jobs.a -> core.jobs.b" in found
    assert any("imports the private name _hidden of core.jobs.b" in p for p in found)
    assert any(p.startswith("webui/long.py:1: big is 81 lines") for p in found)
    assert "core/gone/ is not described in docs/architecture.md" in found
    assert "docs/architecture.md describes core/ghost/, which does not exist" in found
    assert len(found) == 5
