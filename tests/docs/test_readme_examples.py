"""The README's Python examples run as written: the public API a newcomer sees first works.

Every ```python block of README.md is executed in order, in one namespace (later blocks use
what earlier ones made: the zoo, the canonical zoo), in an empty directory. A failure names
the block's first line in README.md, and the traceback points at README.md's own lines.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number of the block's first code line, code)`` for every ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_blocks_are_found():
    text = "a\n```python\nx = 1\n```\nb\n```\nnot python\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = 2\n")]


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5, "README.md should show a Python example per verb family"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for line, code in blocks:
        # padded so that line numbers in a traceback are README.md's
        compiled = compile("\n" * (line - 1) + code, str(README), "exec")
        try:
            exec(compiled, namespace)
        except Exception as e:
            pytest.fail(f"README.md example at line {line} failed: {type(e).__name__}: {e}")
