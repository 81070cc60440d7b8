"""The package's structure: imports point one way (no cycle, counting imports inside
functions too), the layers import only what docs/architecture.md allows, and the weights-file
readers never import the module classes."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fastlstm"


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py")) + sorted(PKG.rglob("*.pyx"))}


def _resolve(name):
    """The fastlstm module that ``name`` (a module or a name in one) refers to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path):
    """{imported fastlstm module: line} for every import in ``path``, at any depth, except
    those under ``if TYPE_CHECKING:`` (which never run)."""
    text = path.read_text()
    found = {}
    if path.suffix == ".pyx":  # Cython: read the import lines only
        for lineno, line in enumerate(text.splitlines(), 1):
            m = re.match(r"\s*(?:from\s+(fastlstm[\w.]*)\s+c?import\s+([\w, ]+)"
                         r"|c?import\s+(fastlstm[\w.]*))", line)
            if m:
                base = m.group(1) or m.group(3)
                names = [n.strip() for n in (m.group(2) or "").split(",") if n.strip()]
                for target in [f"{base}.{n}" for n in names] or [base]:
                    found.setdefault(_resolve(target), lineno)
        found.pop(None, None)
        return found
    tree = ast.parse(text)
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("fastlstm"):
                found.setdefault(_resolve(target), node.lineno)
    found.pop(None, None)
    return found


GRAPH = {name: {t for t in _imports(path) if t != name} for name, path in MODULES.items()}


def _cycles(graph):
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_read():
    # The parser sees what is there: a known edge of each kind.
    assert "fastlstm._ext.kernels" in GRAPH["fastlstm.lstm"]
    assert "fastlstm._ext.blas" in GRAPH["fastlstm._ext.kernels"]  # a cimport
    assert "fastlstm.io.safetensors" in GRAPH["fastlstm.io.files"]


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles (imports inside functions count too): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["fastlstm._ext.kernels"].add("fastlstm.lstm")
    assert any("fastlstm.lstm" in c and "fastlstm._ext.kernels" in c for c in _cycles(graph))


# What each layer may import of fastlstm (docs/architecture.md); everything else is free
# to import the layers below it.
ALLOWED = {
    "fastlstm._ext": {"fastlstm._ext"},
    "fastlstm._errors": set(),
    "fastlstm._common": set(),
    "fastlstm._version": set(),
    "fastlstm._threads": {"fastlstm._ext"},
    "fastlstm._info": {"fastlstm._ext", "fastlstm._threads", "fastlstm._version"},
    "fastlstm.io": {"fastlstm.io", "fastlstm._errors", "fastlstm._common"},
    "fastlstm._module": {"fastlstm._ext", "fastlstm._errors", "fastlstm._common",
                         "fastlstm._threads", "fastlstm.io"},
}


def test_nothing_but_the_front_ends_imports_the_command_line_or_the_benchmark():
    users = {name for name, targets in GRAPH.items()
             if any(t.startswith(("fastlstm.cli", "fastlstm._bench")) for t in targets)}
    assert {u for u in users if not u.startswith(("fastlstm.cli", "fastlstm._bench"))} <= {
        "fastlstm.__main__"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer):
    bad = []
    for name, targets in GRAPH.items():
        if name != layer and not name.startswith(layer + "."):
            continue
        for target in targets:
            if not any(target == ok or target.startswith(ok + ".") for ok in ALLOWED[layer]):
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)
