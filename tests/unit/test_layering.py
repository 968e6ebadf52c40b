"""The core stands alone: importing it loads no web, UI or CLI framework, and does no work at import."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "sdplay"

EDGE = ("fastapi", "uvicorn", "starlette", "ipywidgets", "typer", "click", "sdplay.server", "sdplay.cli")
CORE = ("sdplay", "sdplay.engine", "sdplay.run", "sdplay.loading", "sdplay.optimize", "sdplay.images",
        "sdplay.devices", "sdplay.samplers", "sdplay.catalog", "sdplay.prompts", "sdplay.checkpoints")  # fmt: skip


def test_core_imports_no_edge_framework():
    code = (
        f"import sys\nfor m in {CORE!r}: __import__(m)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {EDGE!r} or m.startswith({EDGE!r})]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"core imported edge modules: {out}"


def test_importing_sdplay_loads_no_torch():
    code = "import sys, sdplay; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """sdplay module -> the sdplay modules it imports anywhere (top level, in functions, for type checking)."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):  # `from pkg import submodule` depends on the submodule only
                base = _absolute(node, package)
                names = [f"{base}.{alias.name}" for alias in node.names]
                targets |= {n for n in names if n in modules} or {base}
                targets |= {base for n in names if n not in modules}
        graph[name] = {_owner(t, modules) for t in targets if _owner(t, modules)} - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_in_sdplay():
    """No module of sdplay imports, directly or through others, a module that imports it back (typing imports too)."""
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _owner(target: str, modules: dict) -> str | None:
    """The sdplay module a dotted import target names (`sdplay.x` for `sdplay.x.name`); None outside sdplay."""
    while target:
        if target in modules:
            return None if target == "sdplay" else target
        target = target.rpartition(".")[0]
    return None


def test_the_graph_counts_lazy_and_typing_imports(tmp_path):
    pkg = tmp_path / "sdplay"
    (pkg / "server").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "server" / "__init__.py").write_text("")
    (pkg / "server" / "a.py").write_text("def f():\n    from sdplay.server.b import g\n")
    (pkg / "server" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sdplay.server import a\n"
    )
    (pkg / "c.py").write_text("from .server import a\nimport os\n")
    graph = import_graph(pkg)
    assert graph == {"sdplay": set(), "sdplay.server": set(), "sdplay.server.a": {"sdplay.server.b"},
                     "sdplay.server.b": {"sdplay.server.a"}, "sdplay.c": {"sdplay.server.a"}}  # fmt: skip
    assert find_cycles(graph) == [["sdplay.server.a", "sdplay.server.b"]]


def probes(root: Path = SRC) -> list[str]:
    """`getattr`/`hasattr` calls on an engine or on one of sdplay's own modules, as "file:line: call".

    Code that needs something of an engine asks the engine interface (sdplay.protocol) for it, and code that
    needs something of a module imports it; probing hides a missing method until a request finds it.
    """
    modules = {_module_name(p, root) for p in root.rglob("*.py")}
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        own = set()  # names bound to sdplay modules in this file
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sdplay":
                own |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in modules}
            elif isinstance(node, ast.Import):
                own |= {a.asname for a in node.names if a.asname and a.name in modules}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
                continue
            target = ast.unparse(node.args[0])
            if node.func.id in ("getattr", "hasattr") and ("engine" in target.lower() or target in own):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_probing_of_engines_or_of_sdplay_modules():
    assert probes() == []


def test_the_probe_finder_finds_probes(tmp_path):
    pkg = tmp_path / "sdplay"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tele.py").write_text("")
    (pkg / "a.py").write_text(
        "from sdplay import tele\nfrom sdplay.tele import x\n"
        "def f(service, pipe):\n"
        "    getattr(service.engines[0], 'loras', None)\n    hasattr(tele, 'go')\n"
        "    getattr(pipe, 'unet')\n    getattr(x, 'y')\n"
    )
    assert [p.split(": ", 1)[1] for p in probes(pkg)] == [
        "getattr(service.engines[0], 'loras', None)",
        "hasattr(tele, 'go')",
    ]
