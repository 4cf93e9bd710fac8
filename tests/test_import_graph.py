"""Imports run one way: no cycle among the modules of hostplane, agent and controller.

Read from the source (ast), lazy imports inside functions included: a cycle hidden in a
function (placement ↔ snapshot cache, once) is still two modules that each need the other.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("hostplane", "agent", "controller")


def modules():
    """{dotted name: path} of every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for folder, _dirs, files in os.walk(os.path.join(REPO, package)):
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(folder, file)
                    parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts.pop()
                    found[".".join(parts)] = path
    return found


def imports(name, path, known):
    """The known modules `name` imports, each by its most specific name."""
    with open(path) as source:
        tree = ast.parse(source.read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_the_services_modules():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert len(graph) > 50 and graph["controller.placement"]   # the walk did read the tree
    assert cycles(graph) == []


def test_a_lazy_back_import_is_a_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_blueprints_keep_http_only():
    """A blueprint (controller/api) calls its service module: no SQL of its own, and no
    private name of another blueprint."""
    known = modules()
    blueprints = {}
    for name, path in known.items():
        if name.startswith("controller.api."):
            with open(path) as source:
                tree = ast.parse(source.read())
            if any(isinstance(node, ast.Assign) and any(
                    getattr(target, "id", None) == "bp" for target in node.targets)
                   for node in tree.body):
                blueprints[name] = tree
    assert len(blueprints) >= 8
    found = []
    for name, tree in blueprints.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] == "sqlalchemy" or node.module.startswith(
                        "controller.db"):
                    found.append(f"{name} imports {node.module}")
                if node.module in blueprints:
                    found += [f"{name} imports {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_")]
            elif isinstance(node, ast.Import):
                found += [f"{name} imports {alias.name}" for alias in node.names
                          if alias.name.split(".")[0] == "sqlalchemy"]
    assert found == []
