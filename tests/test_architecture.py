"""The package's subpackages import each other without cycles (read from the source, no import)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "trapmid_tf"
# Cycles still in the code, each to be broken by its own change; a cycle that is gone must be
# removed here. experiments <-> report: the report module renders the experiments' summaries
# (issue 31, the report split).
KNOWN_CYCLES = {frozenset({"experiments", "report"})}


def _unit(module):
    """The top-level subpackage or module of `trapmid_tf` that dotted `module` belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "trapmid_tf" and len(parts) > 1 else None


def subpackage_imports(package=PACKAGE):
    """Maps each top-level unit of the package to the units its files import.

    Every `import` and `from ... import` statement counts, at module level or inside a
    function; `from trapmid_tf import x` counts as importing `trapmid_tf.x`.
    """
    graph = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if len(parts) < 2:
            continue  # the package's own __init__, which loads the API lazily
        source = parts[1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = (
                    [f"trapmid_tf.{alias.name}" for alias in node.names]
                    if node.module == "trapmid_tf" else [node.module]
                )
            else:
                continue
            for target in map(_unit, targets):
                if target is not None and target != source:
                    graph.setdefault(source, set()).add(target)
    return graph


def cycles(graph):
    """The sets of two or more units that each reach all the others (strongly connected)."""
    reach = {}
    for start in graph:
        seen, frontier = set(), [start]
        while frontier:
            for target in graph.get(frontier.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)
        reach[start] = seen
    found = set()
    for unit in graph:
        component = {unit} | {other for other in reach[unit] if unit in reach.get(other, ())}
        if len(component) > 1:
            found.add(frozenset(component))
    return found


def test_cycles_finds_strongly_connected_units():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(graph) == {frozenset("abc"), frozenset("de")}
    assert cycles({"a": {"b"}, "b": {"c"}}) == set()


def test_no_import_cycle_between_subpackages():
    graph = subpackage_imports()
    assert {"attacks", "metrics", "models", "layers"} <= set(graph)  # the scan found the code
    found = cycles(graph)
    assert not found - KNOWN_CYCLES, f"import cycles between subpackages: {found - KNOWN_CYCLES}"
    assert not KNOWN_CYCLES - found, f"gone, remove from KNOWN_CYCLES: {KNOWN_CYCLES - found}"
