"""The package's subpackages import each other without cycles, and the report's
interpretation imports no rendering (read from the source, no import); the console commands
and the experiments import only at module level, without cycles, and import in a fresh
interpreter."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "trapmid_tf"
# Their imports are all at module level (issue 31): `trapmid_tf/cli/__init__.py` imports
# TensorFlow quietly before any command module, so none defers an import for start-up order.
MODULE_LEVEL_IMPORTS_ONLY = ("experiments", "cli")
# `(file, function) -> why` for each function that must import inside itself: only the import
# of an optional dependency may. None does.
FUNCTION_LOCAL_IMPORTS_ALLOWED = {}


def _unit(module):
    """The top-level subpackage or module of `trapmid_tf` that dotted `module` belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "trapmid_tf" and len(parts) > 1 else None


def _is_module(dotted):
    """Whether dotted `trapmid_tf...` names a module or subpackage of the package."""
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _dotted(path):
    """The dotted module name of a source file of the package (a package for `__init__.py`)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path):
    """The dotted modules a source file imports.

    Every `import` and `from ... import` statement counts, at module level or inside a
    function; `from p import x` counts as importing `p` and, when `p.x` is a module of the
    package, `p.x`.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if _is_module(f"{node.module}.{alias.name}"))
    return found


def function_local_imports(path):
    """`(function, line)` of each import statement inside a function (or method) of a file."""
    found = []

    def visit(node, function):
        if function is not None and isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((function, node.lineno))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
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


def _modules(units):
    """The source files of the package's `units` (top-level subpackages) by dotted name."""
    return {_dotted(path): path for unit in units for path in sorted((PACKAGE / unit).glob("*.py"))}


def test_module_imports_counts_the_modules_a_from_import_names(tmp_path):
    source = tmp_path / "source.py"
    source.write_text("import numpy as np\n"
                      "from trapmid_tf import startup\n"
                      "from trapmid_tf.experiments import audit, summarize_seeds\n")
    assert module_imports(source) == {
        "numpy", "trapmid_tf", "trapmid_tf.startup", "trapmid_tf.experiments",
        "trapmid_tf.experiments.audit",  # a module; summarize_seeds is a function
    }


def test_function_local_imports_finds_imports_in_functions_and_methods_only(tmp_path):
    source = tmp_path / "source.py"
    source.write_text("\n".join([
        "import os",                      # 1: module level
        "if os.name:",
        "    import json",                # 3: module level, under an `if`
        "def f():",
        "    import sys",                 # 5
        "    def g():",
        "        from os import path",    # 7: in g, nested in f
        "    return g",
        "class C:",
        "    import re",                  # 10: class body, not a function
        "    def m(self):",
        "        import re",              # 12
    ]) + "\n")
    assert function_local_imports(source) == [("f", 5), ("g", 7), ("m", 12)]


def test_the_commands_and_experiments_import_only_at_module_level():
    found = {}
    for path in _modules(MODULE_LEVEL_IMPORTS_ONLY).values():
        for function, line in function_local_imports(path):
            name = path.relative_to(PACKAGE).as_posix()
            found.setdefault((name, function), []).append(line)
    assert set(found) == set(FUNCTION_LOCAL_IMPORTS_ALLOWED), (
        f"function-local imports (file, function): lines {found}; allowed "
        f"{FUNCTION_LOCAL_IMPORTS_ALLOWED}"
    )


def test_the_commands_and_experiments_import_each_other_without_cycles():
    modules = _modules(MODULE_LEVEL_IMPORTS_ONLY)
    graph = {name: module_imports(path) & set(modules) for name, path in modules.items()}
    assert "trapmid_tf.experiments.pipeline" in graph["trapmid_tf.experiments.audit"]
    found = cycles(graph)
    assert not found, f"import cycles between modules: {found}"


def test_every_command_and_experiment_module_imports_in_a_fresh_interpreter():
    # The experiments first, as a notebook or a recipe imports them, then the commands.
    names = sorted(_modules(["experiments"])) + sorted(_modules(["cli"]))
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "    print(name)\n")
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == names
