"""The package layout holds: no import cycle in the product code, and no module imports from a layer above its own
(docs/architecture.md, "Layers"). Imports inside functions count: a cycle through a lazy import is still a cycle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from tests.conftest import REPO_DIR

# Lowest first; a module may import from its own layer and those before it. The first matching prefix decides.
LAYERS: list[tuple[str, ...]] = [
    ("ecgfm.labels", "ecgfm.terminology"),
    ("ecgfm.records",),
    ("ecgfm.settings",),
    ("ecgfm.network", "ecgfm.results"),
    ("ecgfm.inference", "ecgfm.precision"),
    ("interpreter", "ecgfm.probes"),
    ("ecgfm.archive", "ecgfm.evaluation", "ecgfm.cli", "ecgfm.__main__"),
    ("serving",),
    ("service",),
]
PRODUCT_ROOTS = ("ecgfm", "interpreter", "serving", "service.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    modules = {}
    for root in PRODUCT_ROOTS:
        path = REPO_DIR / root
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            modules[module_name(file)] = file
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The product modules ``name`` imports, anywhere in the file (``from a import b`` is ``a.b`` when that is a
    module, else ``a``)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known and target != name}
    return found


def layer_of(name: str) -> int:
    if name == "ecgfm":  # the package itself: its version and a lazy public API that names modules by string
        return 0
    for rank, prefixes in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return rank
    raise AssertionError(f"{name} is in no layer: add it to LAYERS and to docs/architecture.md")


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def test_the_product_code_has_no_import_cycle() -> None:
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    graph = import_graph()
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in graph.items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_every_product_module_is_in_a_layer_and_every_package_says_what_it_owns() -> None:
    for name, path in product_modules().items():
        layer_of(name)
        if path.name == "__init__.py" and (name == "serving" or name.count(".") == 1):  # ecgfm.<job>, serving
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "May import" in docstring, f"{path}: its docstring must say what the package may import"


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The graph and the layers are read from real code: a planted cycle and a planted upward import are caught."""
    graph = import_graph()
    assert "ecgfm.records.record" in graph["ecgfm.records.formats.base"]  # a top-level import
    assert "ecgfm.records.formats" in graph["ecgfm.records.readers"]  # an import inside a function
    planted = {**graph, "ecgfm.records.record": {"ecgfm.records.formats.base"}}
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(planted).static_order())
    assert layer_of("ecgfm.network.model") > layer_of("ecgfm.records.preprocess")
    assert layer_of("serving.contract") > layer_of("interpreter.api") > layer_of("ecgfm.inference")
