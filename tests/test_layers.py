"""The package's layers only look down, and no module imports itself round a circle (STYLE.md 13).

    cli -> api -> engine -> recipes -> models / metrics / data / viz -> ops -> base

Every `mtlcli` import is read from the source with `ast` — module level and inside functions alike (a
function-level import is still a dependency, only a later one) — so the check needs no torch and
imports nothing. A new top-level module must be given a layer in LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "mtlcli"
ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module belongs to the first layer one of whose prefixes it starts with
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("mtlcli.errors", "mtlcli.safety", "mtlcli.devices")),
    ("ops", ("mtlcli.ops",)),
    ("models/metrics/data/viz", ("mtlcli.models", "mtlcli.metrics", "mtlcli.data", "mtlcli.viz")),
    ("recipes", ("mtlcli.recipes", "mtlcli.recipe_checks", "mtlcli.recipe_toml", "mtlcli.hints")),
    ("engine", ("mtlcli.engine", "mtlcli.export", "mtlcli.provenance")),
    ("api", ("mtlcli.api", "mtlcli")),  # the package itself re-exports the API (lazily)
    ("cli", ("mtlcli.cli", "mtlcli.__main__")),
]


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module under root/package."""
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, module- and function-level imports alike. An import
    of the package itself (`from mtlcli import __version__`) is left out: importing any submodule
    loads it first anyway."""
    files = module_files(root, package)

    def owner(name: str) -> str | None:  # the module a dotted name lives in
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                # `from mtlcli.viz import draw` imports the module mtlcli.viz.draw
                names.update(f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names)
        graph[module] = {
            m for m in map(owner, (n for n in names if n == package or n.startswith(package + "."))) if m
        } - {module, package}
    return graph


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")
    return best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a (layer) imports b (higher layer)' for every import that looks up."""
    return [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if layer_of(b) > layer_of(a)
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [m1, m2, ..., m1], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_every_module_has_a_layer():
    layers = {module: layer_of(module) for module in module_files(ROOT)}  # layer_of fails on a module without one
    assert len(layers) > 50 and set(layers.values()) == set(range(len(LAYERS)))  # and no layer is empty


def test_no_import_circle():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_layers_only_look_down():
    assert upward_imports(import_graph(ROOT)) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("where", ["module", "function"])
def test_the_check_sees_a_lower_layer_importing_a_higher_one(tmp_path: Path, where: str):
    """A tree in which ops imports models (at module level, or inside a function) fails the check, the
    way torchvision keeps `ops` free of `models`; the same import the other way round passes."""
    line = "from mtlcli.models.net import build\n"
    body = line if where == "module" else "def f():\n    " + line
    _write(
        tmp_path,
        {
            "mtlcli/__init__.py": "",
            "mtlcli/ops/__init__.py": "",
            "mtlcli/ops/boxes.py": body,
            "mtlcli/models/__init__.py": "",
            "mtlcli/models/net.py": "from mtlcli.ops import boxes\n\n\ndef build():\n    return boxes\n",
        },
    )
    graph = import_graph(tmp_path)
    assert graph["mtlcli.ops.boxes"] == {"mtlcli.models.net"}
    assert upward_imports(graph) == ["mtlcli.ops.boxes (ops) imports mtlcli.models.net (models/metrics/data/viz)"]
    assert find_cycle(graph) == ["mtlcli.models.net", "mtlcli.ops.boxes", "mtlcli.models.net"]
    (tmp_path / "mtlcli/ops/boxes.py").write_text("X = 1\n")
    assert upward_imports(import_graph(tmp_path)) == [] and find_cycle(import_graph(tmp_path)) is None


def test_the_check_follows_relative_and_package_imports(tmp_path: Path):
    _write(
        tmp_path,
        {
            "mtlcli/__init__.py": "",
            "mtlcli/engine/__init__.py": "",
            "mtlcli/engine/train.py": "from . import loop\nfrom mtlcli import api\n",
            "mtlcli/engine/loop.py": "def f():\n    from ..viz import draw\n",
            "mtlcli/viz/__init__.py": "",
            "mtlcli/viz/draw.py": "import mtlcli.engine.train\n",
            "mtlcli/api.py": "",
        },
    )
    graph = import_graph(tmp_path)
    assert graph["mtlcli.engine.train"] == {"mtlcli.engine.loop", "mtlcli.api"}
    assert graph["mtlcli.engine.loop"] == {"mtlcli.viz.draw"}
    assert find_cycle(graph) == ["mtlcli.engine.loop", "mtlcli.viz.draw", "mtlcli.engine.train", "mtlcli.engine.loop"]
    assert upward_imports(graph) == [
        "mtlcli.engine.train (engine) imports mtlcli.api (api)",
        "mtlcli.viz.draw (models/metrics/data/viz) imports mtlcli.engine.train (engine)",
    ]
