"""The package map: imports only go down the floors, and no two packages import each other (even indirectly)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "modgap"
FLOORS = {
    "errors": 0, "exports": 0, "files": 0, "hub": 0, "distributed": 0, "progress": 0, "lazy": 0, "arrays": 0,
    "__init__": 0, "_kernels": 0,
    "store": 1, "encoders": 1,
    "align": 2, "embed": 2, "training": 2,
    "gap": 3, "mllm": 3, "eval": 3, "synth": 3,
    "embedder": 4,
    "world": 5,
    "cli": 6,
}  # fmt: skip


def _package(parts: list[str]) -> str:
    """Top-level room of a module path inside modgap (``hub`` for modgap/hub.py, ``store`` for modgap/store/x)."""
    return parts[0].removesuffix(".py")


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_edges() -> set[tuple[str, str, str]]:
    """(importing package, imported package, file) for every import of modgap inside modgap, function-level
    imports included, imports under ``if TYPE_CHECKING`` excluded."""
    edges = set()
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        here = _package(list(rel))
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "modgap"]
            for name in names:
                parts = name.split(".")
                if parts[0] != "modgap" or len(parts) < 2 or _type_checking_only(node, parents):
                    continue
                there = parts[1]
                if there != here and not (node.module == "modgap" and there not in FLOORS):
                    edges.add((here, there, str(path.relative_to(SRC))))
    return edges


def test_every_package_has_a_floor():
    rooms = {_package([p.name]) for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert rooms - {"__init__"} <= set(FLOORS), rooms - set(FLOORS)


def test_imports_only_go_down_the_floors():
    upward = sorted(
        f"{file}: {a} (floor {FLOORS[a]}) imports {b} (floor {FLOORS[b]})"
        for a, b, file in import_edges()
        if FLOORS[b] > FLOORS[a]
    )
    assert not upward, "\n".join(upward)


def test_no_package_level_cycles():
    graph: dict[str, set[str]] = {}
    for a, b, _ in import_edges():
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return False

    cycles = sorted(f"{a} <-> {b}" for a, targets in graph.items() for b in targets if reaches(b, a))
    assert not cycles, cycles


def test_the_checker_sees_function_level_imports():
    # The reshaped code once had `mllm` reach `world` from inside a function; such imports must count.
    edges = {(a, b) for a, b, _ in import_edges()}
    assert ("cli", "mllm") in edges and ("world", "mllm") in edges


def test_every_package_presents_its_names_one_way_and_each_resolves():
    """Each package's ``__init__`` is a docstring and one ``lazy_exports`` table (no eager re-exports, no code),
    and every name in it is defined where the table says."""
    import importlib

    for init in sorted(SRC.glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        body = tree.body
        assert ast.get_docstring(tree), f"{init}: no docstring naming the rooms"
        kinds = [type(node).__name__ for node in body[1:]]
        assert kinds == ["ImportFrom", "Assign"], f"{init}: expected the docstring and one lazy_exports table"
        assert ast.unparse(body[1]) == "from modgap.exports import lazy_exports", init
        package = importlib.import_module(f"modgap.{init.parent.name}")
        for name in package.__all__:
            # a submodule of the same name, once imported, would shadow the exported name
            assert not (init.parent / f"{name}.py").exists(), f"{init.parent.name}.{name} is also a module"
            assert getattr(package, name) is not None, f"{init.parent.name}.{name}"
    assert not (SRC / "world").is_dir() or (SRC / "world" / "__init__.py").is_file()
