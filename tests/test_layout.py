"""The package's shape: module and function size limits, with the exceptions docs/architecture.md lists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "spin_diffusion"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def documented_exceptions() -> set[str]:
    """``path`` or ``path:function`` entries of the size-limit table in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Size limits", 1)[1]
    return set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.M))


def oversized() -> set[str]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.add(rel)
        for node in ast.walk(ast.parse(text)):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                found.add(f"{rel}:{node.name}")
    return found


def test_every_oversized_module_or_function_is_a_documented_exception():
    missing = oversized() - documented_exceptions()
    assert not missing, f"over the size limits and not listed in docs/architecture.md: {sorted(missing)}"


def test_documented_exceptions_are_still_needed():
    stale = documented_exceptions() - oversized()
    assert not stale, f"listed in docs/architecture.md but within the limits now: {sorted(stale)}"
