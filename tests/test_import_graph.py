"""The import graph of ``cloome_hf`` has no circle.

Only module-level imports count (an import inside a function runs late and is how a module reaches a later
layer on purpose); relative imports are resolved against the importing module's package.
"""

import ast
from pathlib import Path

import cloome_hf

PACKAGE_DIR = Path(cloome_hf.__file__).parent


def _module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    parts = (package_dir.name, *path.relative_to(package_dir).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module):
    """Import nodes that run when the module is imported: module body, and ``if`` / ``try`` blocks in it."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """module -> the ``cloome_hf`` modules it imports at module level (a package import counts as its
    ``__init__``; ``from pkg import name`` counts ``pkg.name`` when that is a module, else ``pkg``)."""
    paths = {_module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in paths else stem for a in node.names]
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` of ``graph``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_graph_sees_relative_and_absolute_imports():
    graph = import_graph()
    assert "cloome_hf.evaluation.tasks" in graph["cloome_hf.evaluation.runner"]  # from .tasks import ...
    assert "cloome_hf.profiling" in graph["cloome_hf.evaluation.jump"]  # from cloome_hf.profiling import ...
    assert "cloome_hf.channels" in graph["cloome_hf.data.synthetic"]  # from ..channels import ...


def test_find_cycle_reports_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_a_circle_through_relative_imports_is_found_and_function_imports_are_not_edges(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from ..a import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == set()
    assert find_cycle(graph) is None
    (pkg / "sub" / "b.py").write_text("try:\n    from .. import a\nexcept ImportError:\n    pass\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_cloome_hf_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def _public_names_of(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_")}


def test_channel_constants_are_imported_from_channels_only():
    """``CHANNELS`` and the other names of ``cloome_hf/channels.py`` have one home: no other module passes them on."""
    owned = _public_names_of(PACKAGE_DIR / "channels.py")
    assert {"CHANNELS", "JUMP_CHANNELS", "canonical_channel_name"} <= owned
    root = PACKAGE_DIR.parent
    wrong = []
    for folder in ("cloome_hf", "tests", "benchmarks", "scripts"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                source = "." * node.level + (node.module or "")
                from_channels = source.endswith("channels") and source.rpartition(".")[2] == "channels"
                wrong += [f"{path.relative_to(root)}: {a.name} from {source}" for a in node.names
                          if a.name in owned and not from_channels]
    assert not wrong, "import these from cloome_hf.channels: " + "; ".join(wrong)


def test_no_module_imports_another_modules_private_name():
    """A helper another module needs is public (no leading underscore), or lives where both use it."""
    root = PACKAGE_DIR.parent
    wrong = []
    for folder in ("cloome_hf", "tests"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("cloome_hf")):
                    wrong += [f"{path.relative_to(root)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not wrong, "private names imported across modules: " + "; ".join(wrong)


# ---- newcomer3 (#21 item 5) ----
def test_no_test_module_imports_another_test_module():
    """Shared test code lives in conftest.py (fixtures) or a support module (no ``test_`` prefix), so a test module
    can run, move or be deleted alone."""
    tests = PACKAGE_DIR.parent / "tests"
    modules = {path.stem for path in tests.rglob("test_*.py")}
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[-1] in modules]
    assert not wrong, "; ".join(wrong)


def test_the_tests_mirror_the_package():
    """Test modules live in a folder per concern of the package (models and towers, data, inference, train,
    evaluation, profiling, publish, serve, cli); only the tests of the whole product (the import graph, the README,
    the installed wheel) stay at the top of ``tests/``."""
    tests = PACKAGE_DIR.parent / "tests"
    concerns = {"models", "vision_towers", "data", "inference", "train", "evaluation", "profiling", "publish",
                "serve", "cli"}
    top = sorted(p.name for p in tests.glob("test_*.py"))
    assert top == ["test_import_graph.py", "test_readme.py", "test_wheel.py"], top
    folders = {p.parent.name for p in tests.rglob("test_*.py") if p.parent != tests}
    assert folders <= concerns, folders - concerns
    packages = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file()} - {"resources", "model_cards"}
    assert packages <= concerns, f"a package folder without its test folder: {packages - concerns}"
