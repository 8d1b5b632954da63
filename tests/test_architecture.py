"""The package's subpackages import each other without cycles, and the report's
interpretation imports no rendering (read from the source, no import)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "trapmid_tf"


def _unit(module):
    """The top-level subpackage or module of `trapmid_tf` that dotted `module` belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "trapmid_tf" and len(parts) > 1 else None


def module_imports(path):
    """The dotted modules a source file imports.

    Every `import` and `from ... import` statement counts, at module level or inside a
    function; `from trapmid_tf import x` counts as importing `trapmid_tf.x`.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update(
                [f"trapmid_tf.{alias.name}" for alias in node.names]
                if node.module == "trapmid_tf" else [node.module]
            )
    return found


def subpackage_imports(package=PACKAGE):
    """Maps each top-level unit of the package to the units its files import (`module_imports`)."""
    graph = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if len(parts) < 2:
            continue  # the package's own __init__, which loads the API lazily
        source = parts[1]
        for target in map(_unit, module_imports(path)):
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
    assert "report" in graph["experiments"]  # the pipeline writes it: report imports no stage
    found = cycles(graph)
    assert not found, f"import cycles between subpackages: {found}"


def test_the_reports_interpretation_neither_draws_nor_lays_out():
    # What the results say reads alone: no picture library, no grid, no report.md layout.
    imported = module_imports(PACKAGE / "report" / "interpretation.py")
    drawing = {module for module in imported if module.split(".")[0] == "PIL"}
    assert drawing | (imported & {"trapmid_tf.report.grids", "trapmid_tf.report.markdown"}) == set()
    assert "trapmid_tf.report.tables" in imported  # the scan read its imports
