"""ARP runs on Python 3.9 (Debian's PyPy): no 3.10+ language or library feature slips in.

CI runs the whole suite on PyPy 3.9 too; these checks say the same thing on any
interpreter, at once and with the file and line.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

from twisted.trial import unittest

from arp.compat import slots_dataclass, with_slots

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("arp", "tests", "bench", "tools", "twisted/plugins")
SHIM = ROOT / "arp" / "compat.py"  # uses the 3.10 features behind a version check
ANNOTATED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.AnnAssign)


def python_files() -> list[Path]:
    """Every Python file of the project (the fakes under tests/fakes are scripts without .py)."""
    files: list[Path] = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            skipped = ("__pycache__", "node_modules")  # node_modules: the agent CLIs npm installed
            if any(part.startswith("_trial_temp") or part in skipped for part in path.parts):
                continue
            if not path.is_file():
                continue
            if path == SHIM:
                continue
            if path.suffix == ".py" or (path.parent.name == "fakes" and not path.suffix):
                files.append(path)
    return files


def uses_310(tree: ast.AST, future_annotations: bool) -> list[tuple[int, str]]:
    """Where ``tree`` needs Python 3.10 or later at run time: (line, what)."""
    found = []
    for node in ast.walk(tree):
        if type(node).__name__ in ("Match", "TryStar", "TypeAlias"):
            found.append((node.lineno, type(node).__name__.lower() + " statement"))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            keywords = {k.arg for k in node.keywords}
            if name == "zip" and "strict" in keywords:
                found.append((node.lineno, "zip(strict=)"))
            if name == "dataclass" and keywords & {"slots", "kw_only", "match_args"}:
                found.append((node.lineno, "dataclass(slots/kw_only/match_args=)"))
            if name in ("isinstance", "issubclass") and len(node.args) == 2:
                if isinstance(node.args[1], ast.BinOp) and isinstance(node.args[1].op, ast.BitOr):
                    found.append((node.lineno, f"{name}(x, A | B)"))
            if name in ("aiter", "anext") and isinstance(node.func, ast.Name):
                found.append((node.lineno, f"{name}()"))
        elif isinstance(node, ast.ImportFrom) and node.module == "datetime":
            if any(alias.name == "UTC" for alias in node.names):
                found.append((node.lineno, "datetime.UTC"))
        elif isinstance(node, ast.Attribute) and node.attr == "UTC":
            if isinstance(node.value, ast.Name) and node.value.id == "datetime":
                found.append((node.lineno, "datetime.UTC"))
        elif isinstance(node, ast.Import) and any(a.name == "tomllib" for a in node.names):
            found.append((node.lineno, "tomllib"))
        elif isinstance(node, ast.ImportFrom) and node.module == "typing":
            late = {"ParamSpec", "TypeAlias", "Concatenate", "TypeGuard", "Self", "Never", "LiteralString"}
            late &= {a.name for a in node.names}
            if late:
                found.append((node.lineno, f"typing.{', '.join(sorted(late))}"))
        elif not future_annotations and isinstance(node, ANNOTATED):
            # annotations are evaluated when the def (or module/class-level assignment) runs
            annotations = (
                [a.annotation for a in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs)]
                + [node.returns]
                if not isinstance(node, ast.AnnAssign)
                else [node.annotation]
            )
            for annotation in annotations:
                if annotation is not None and any(
                    isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation)
                ):
                    found.append((node.lineno, "X | Y in an evaluated annotation"))
    return found


class Python39Tests(unittest.TestCase):
    """The code stays Python 3.9 compatible (``python_requires >= 3.9``)."""

    def test_no_310_features(self):
        """No file uses a feature that needs Python 3.10+ at run time."""
        problems = []
        files = python_files()
        self.assertGreater(len(files), 50)
        for path in files:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source, str(path), feature_version=(3, 9))
            future = "from __future__ import annotations" in source
            problems += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in uses_310(tree, future)]
        self.assertEqual(problems, [], "Python 3.10+ features (ARP supports 3.9, see README)")

    def test_the_check_finds_each_feature(self):
        """Each feature the check looks for is found in a sample that uses it."""
        samples = {
            "zip(a, b, strict=True)": "zip(strict=)",
            "@dataclass(slots=True)\nclass A: pass": "dataclass(slots/kw_only/match_args=)",
            "isinstance(x, int | float)": "isinstance(x, A | B)",
            "from datetime import UTC": "datetime.UTC",
            "import datetime\ndatetime.datetime.now(datetime.UTC)": "datetime.UTC",
            "from typing import ParamSpec": "typing.ParamSpec",
            "def f(x: int | None) -> None: pass": "X | Y in an evaluated annotation",
            "import tomllib": "tomllib",
        }
        for source, what in samples.items():
            self.assertIn(what, [w for _, w in uses_310(ast.parse(source), False)], source)
        self.assertEqual(uses_310(ast.parse("def f(x: int | None) -> None: pass"), True), [])
        self.assertEqual(uses_310(ast.parse("isinstance(x, (int, float))\nzip(a, b)"), False), [])

    def test_match_statement_is_found(self):
        """A ``match`` statement is reported (where it parses: on 3.9 the parser itself refuses it)."""
        source = "match x:\n    case 1:\n        pass\n"
        if sys.version_info < (3, 10):
            self.assertRaises(SyntaxError, ast.parse, source)
        else:
            self.assertEqual(uses_310(ast.parse(source), True), [(1, "match statement")])


class SlotsDataclassTests(unittest.TestCase):
    """``arp.compat.slots_dataclass``: the 3.9 path builds the class 3.10's ``dataclass(slots=True)`` does."""

    def _check(self, cls: type) -> None:
        item = cls(1)
        self.assertEqual((item.a, item.b, item.c), (1, 2, []))
        self.assertEqual(item, cls(1))
        self.assertFalse(hasattr(item, "__dict__"))
        with self.assertRaises(AttributeError):
            item.other = 3
        self.assertEqual(cls.__slots__, ("a", "b", "c"))
        self.assertIn("Point", repr(item))
        self.assertIsNot(cls(1).c, cls(1).c)  # default_factory still gives each its own

    def test_on_this_python(self):
        """The decorator as ARP uses it."""

        @slots_dataclass
        class Point:
            a: int
            b: int = 2
            c: list = dataclasses.field(default_factory=list)

        self._check(Point)

    def test_the_39_path(self):
        """The rebuild used on Python 3.9, run here whatever the version."""

        @dataclasses.dataclass
        class Point:
            a: int
            b: int = 2
            c: list = dataclasses.field(default_factory=list)

        self._check(with_slots(Point))
