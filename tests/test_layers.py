"""The package's import rule, read from the code: arrows point down only.

Every `import minbert...` of every module (at the top or inside a function) is an arrow. The
rule (docs/ARCHITECTURE.md): no circle among modules; `minbert/model.py` imports nothing of
ours; `inference/` never imports `training/` and `training/` never imports `inference/`; nothing
imports `cli`; and each module's layer is at or below the importer's (LAYERS, bottom first).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minbert"

# Bottom first. A module may import only from its own layer or lower ones.
LAYERS = [
    ["minbert.model", "minbert.tokenizer", "minbert.distributed"],
    ["minbert.checkpoint"],
    ["minbert.run_files"],
    ["minbert.tasks"],  # and its modules: data, metrics, spec, encoding, heads, losses, phrases
    ["minbert.config", "minbert.configs"],
    ["minbert.multitask"],
    ["minbert.evaluation", "minbert.reports"],
    ["minbert.runs"],
    ["minbert.training", "minbert.inference"],
    ["minbert.cli"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The minbert modules a file imports (a `from package import module` counts as the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("minbert")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minbert"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / child.replace(".", "/")).with_suffix(".py").is_file() or \
                    (PACKAGE.parent / child.replace(".", "/") / "__init__.py").is_file()  # fmt: skip
                found.add(child if is_module else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module}: in no layer of tests/test_layers.py's LAYERS; place it there")


def test_every_module_has_a_layer_and_no_arrow_points_up():
    up = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, bs in graph().items() for b in bs
          if a != "minbert" and layer(b) > layer(a)]  # fmt: skip
    assert not up, "\n".join(up)


def test_training_and_inference_never_import_each_other_and_nobody_imports_cli():
    bad = [f"{a} imports {b}" for a, bs in graph().items() for b in bs
           if (a.startswith("minbert.inference") and b.startswith("minbert.training"))
           or (a.startswith("minbert.training") and b.startswith("minbert.inference"))
           or (b == "minbert.cli" and a != "minbert.cli")]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_the_model_imports_nothing_of_ours():
    assert graph()["minbert.model"] == set()


def test_no_circle():
    edges = graph()
    edges.pop("minbert")  # the package's face names everything lazily (module __getattr__)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges.get(m, ())):
            n = n if n in edges else n.rsplit(".", 1)[0]  # an imported name's module
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n in edges and not state.get(n):
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if not state.get(m):
            visit(m)


def test_the_checks_see_a_circle_and_an_upward_arrow(tmp_path, monkeypatch):
    """The rule's own test: a made-up package with a circle and an upward arrow is caught."""
    pkg = tmp_path / "minbert"
    (pkg / "training").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("from minbert.runs import x\n")
    (pkg / "runs.py").write_text("from minbert import model\n")
    (pkg / "training" / "__init__.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    with pytest.raises(AssertionError, match="minbert.model -> minbert.runs -> minbert.model"):
        test_no_circle()
    with pytest.raises(AssertionError, match=r"minbert.model \(layer 0\) imports minbert.runs"):
        test_every_module_has_a_layer_and_no_arrow_points_up()
