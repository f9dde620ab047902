"""The package's imports point one way (docs/architecture.md).

Every module under ``maht_net`` is parsed with ``ast``; each import of a ``maht_net`` module,
at module level or inside a function, relative or absolute, is an edge. The test fails on an
edge from a lower layer to a higher one, on a cycle between modules, and on a ``maht_net``
import inside a function (those hide cycles; function-level imports are kept for optional heavy
third-party dependencies only). It also checks that every dependency pyproject.toml declares is used.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maht_net"

# Lowest first. A module belongs to the longest entry that prefixes its name; modules of one
# layer may import each other (without cycles), and any lower layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("maht_net.errors", "maht_net.formatting", "maht_net.landmarks", "maht_net.progress"),
    ("maht_net.io",),
    ("maht_net.codec",),
    ("maht_net.visualize",),
    ("maht_net.clinical",),
    ("maht_net.transforms",),
    ("maht_net.models",),
    ("maht_net.datasets",),
    ("maht_net.engine",),
    ("maht_net.inference",),
    ("maht_net.clinical.report",),  # the report's optional explanation runs the network
    ("maht_net.bench",),
    ("maht_net.cli",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _edges(modules: dict[str, Path]) -> list[tuple[str, str, int, bool]]:
    """``(importer, imported, line, inside_function)`` for every import of a ``maht_net`` module."""
    edges = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        in_function = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                in_function.update(id(n) for n in ast.walk(node) if n is not node)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                if target.split(".")[0] != "maht_net" or target == name:
                    continue
                while target not in modules and "." in target:  # "import maht_net.x.y as z" of an attribute
                    target = target.rpartition(".")[0]
                edges.append((name, target, node.lineno, id(node) in in_function))
    return edges


def _layer(module: str) -> int:
    best, layer = -1, -1
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best:
                best, layer = len(entry), i
    return layer


def test_every_module_has_a_layer():
    unplaced = [m for m in _modules() if m != "maht_net" and _layer(m) < 0]
    assert not unplaced, f"modules outside every layer of LAYERS: {unplaced}"


def test_no_upward_import():
    modules = _modules()
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)}) at {modules[a].name}:{line}"
        for a, b, line, _ in _edges(modules)
        if b != "maht_net" and a != "maht_net" and _layer(b) > _layer(a)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_package_import_inside_functions():
    modules = _modules()
    hidden = [f"{a} imports {b} inside a function (line {line})" for a, b, line, inner in _edges(modules) if inner]
    assert not hidden, "maht_net imports inside functions (move them to the top):\n" + "\n".join(hidden)


def test_no_import_cycle():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for a, b, _, _ in _edges(modules):
        graph[a].add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


# Declared dependencies that nothing imports by name, and what needs them.
USED_WITHOUT_IMPORT = {
    "tensorboard": "train.json's TensorBoardStatsHandler (torch.utils.tensorboard)",
    "fire": "the 'python -m monai.bundle' command line",
}
IMPORT_NAMES = {"pytorch-ignite": "ignite", "scikit-image": "skimage", "pillow": "PIL"}


def test_every_declared_dependency_is_used():
    root = PACKAGE.parent
    block = re.search(r"^dependencies = \[(.*?)^\]", (root / "pyproject.toml").read_text(), re.S | re.M).group(1)
    declared = [re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in re.findall(r'^\s*"([^"]+)"', block, re.M)]
    imported = set()
    for folder in ("maht_net", "bundle", "scripts", "monailabel_app"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    imported.add(node.module.split(".")[0])
    for config in (root / "bundle" / "configs").glob("*.json"):  # "$import x" and "_target_": "x.y"
        pairs = re.findall(r'"\$import ([A-Za-z_]\w*)|"_target_": "([A-Za-z_]\w*)\.', config.read_text())
        imported.update(name for pair in pairs for name in pair if name)
    unused = [d for d in declared if IMPORT_NAMES.get(d, d) not in imported and d not in USED_WITHOUT_IMPORT]
    assert not unused, f"pyproject dependencies nothing imports (use them, drop them, or say in USED_WITHOUT_IMPORT what needs them): {unused}"
