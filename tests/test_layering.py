"""The package's house rules: imports go one way only (no circle, not even through a function-level import),
no module over 600 lines, and ``import bevnb`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bevnb

PACKAGE = Path(bevnb.__file__).parent
MAX_LINES = 600
HEAVY = ("pytorch_quantization", "matplotlib", "onnxruntime", "modelopt")


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([root.name, *parts])


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its body (top level, functions, TYPE_CHECKING)."""
    modules = {_module_name(f, root): f for f in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in found:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # a module's own package (``from . import x`` inside it) is where it lives, not an edge
                if target and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) >= 25 and {"bevnb.quant", "bevnb.pipeline"} <= graph["bevnb.validation"]
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_circle_finder_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub import g\n\ndef f():\n    return g()\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f  # hidden in a function\n    return f\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_quant_and_export_no_longer_import_each_other():
    graph = import_graph()
    assert "bevnb.export" not in graph["bevnb.quant"]
    assert "bevnb.pipeline" not in graph["bevnb.quant"]
    assert "bevnb.quant" in graph["bevnb.export"]  # downward, at the call that needs it


def test_no_module_is_over_600_lines():
    lengths = {_module_name(f): len(f.read_text().splitlines()) for f in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in lengths.items() if n > MAX_LINES} == {}


def test_import_bevnb_leaves_the_heavy_stacks_unloaded():
    code = f"import sys, bevnb; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""
    code = "import sys, bevnb; bevnb.quant; print('pytorch_quantization' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"
