"""The layering of docs/ARCHITECTURE.md, enforced: every module of xpcnn imports only modules on
its own floor's earlier entries or below (imports inside functions count), there is no import
cycle, and only the backend's CuPy module imports CuPy."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "xpcnn"

# Bottom first. A module may import what stands before it (an entry names a module or a package:
# "xpcnn.functional" covers xpcnn.functional.conv), and modules of its own package.
ORDER = [
    "xpcnn._version", "xpcnn.errors",                                         # 0
    "xpcnn.backend", "xpcnn.argcheck", "xpcnn.argtypes", "xpcnn.paths",       # 1
    "xpcnn.functional",                                                       # 2
    "xpcnn.initializers", "xpcnn.layers", "xpcnn.optimizers",                 # 3
    "xpcnn.saving", "xpcnn.parallel", "xpcnn.data",
    "xpcnn.interop", "xpcnn.interop.onnx",  # the package's helpers and the ONNX export (the model offers it)
    "xpcnn.training",                                                         # 4
    "xpcnn.model",                                                            # 5
    "xpcnn.presets",                                                          # 6
    "xpcnn.diagnostics", "xpcnn.interop.keras",                               # 7
    "xpcnn.bench",                                                            # 8
    "xpcnn.cli", "xpcnn.__main__",                                            # 9
    "xpcnn",  # the package's front door (__init__): re-exports from below
]
CUPY_MODULE = "xpcnn.backend.cuda"


def module_name(path, root):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def entry(module):
    """The ORDER entry a module belongs to (the longest one that is it or a package above it)."""
    found = [e for e in ORDER if module == e or module.startswith(e + ".")]
    return max(found, key=len) if found else None


def imports(path, root):
    """``[(line, imported module)]`` of one file, at any indentation; ``from . import x`` gives x
    when x is a module of the package."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if (root.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                        (root.parent / Path(*sub.split(".")) / "__init__.py").exists():
                    found.append((node.lineno, sub))
                else:
                    found.append((node.lineno, target))
    return me, found


def violations(root=ROOT):
    """Every upward import, cycle and CuPy import outside CUPY_MODULE, as readable lines."""
    problems, graph = [], {}
    for path in sorted(root.rglob("*.py")):
        me, found = imports(path, root)
        mine = entry(me)
        if mine is None:
            problems.append(f"{me}: not in the declared ORDER (add it to docs/ARCHITECTURE.md and this test)")
            continue
        for line, target in found:
            if target.split(".")[0] == "cupy" or target.startswith("array_api_compat.cupy"):
                if me != CUPY_MODULE:
                    problems.append(f"{me}:{line} imports {target}; only {CUPY_MODULE} may name CuPy")
                continue
            if target.split(".")[0] != "xpcnn":
                continue
            theirs = entry(target)
            graph.setdefault(me, set()).add(target)
            if theirs is None or theirs == mine:
                continue
            if ORDER.index(theirs) > ORDER.index(mine):
                problems.append(f"{me}:{line} imports {target}, which is above it ({theirs} over {mine})")
    problems += _cycles(graph)
    return problems


def _cycles(graph):
    """Import cycles between modules (each reported once)."""
    state, found = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open" and nxt != node:
                found.append("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state and nxt in graph:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_imports_only_below_itself_and_only_one_names_cupy():
    assert violations() == []


@pytest.mark.parametrize("plant, expected", [
    ("    from ..model import Sequential  # planted\n", "imports xpcnn.model, which is above it"),
    ("import cupy  # planted\n", "only xpcnn.backend.cuda may name CuPy"),
])
def test_the_layering_check_fails_on_a_planted_import(tmp_path, plant, expected):
    copy = tmp_path / "xpcnn"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "functional" / "conv.py"
    text = target.read_text(encoding="utf-8")
    if plant.startswith("    "):  # inside a function: indentation does not hide it
        text += "\n\ndef _planted():\n" + plant + "    return Sequential\n"
    else:
        text = plant + text
    target.write_text(text, encoding="utf-8")
    found = violations(copy)
    assert any(expected in line and line.startswith("xpcnn.functional.conv") for line in found), found
