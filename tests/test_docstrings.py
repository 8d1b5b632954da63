"""Every public class and function of the package has a Google-style docstring."""

import inspect

import pytest

import trapmid_tf as tm

MODULES = [tm, tm.attacks, tm.data, tm.defenses, tm.layers, tm.metrics, tm.models, tm.report]


def public_objects():
    seen = {}
    for module in MODULES:
        names = getattr(module, "__all__", None) or [
            n for n in vars(module) if not n.startswith("_")
        ]
        for name in names:
            value = getattr(module, name)
            if inspect.isfunction(value) or inspect.isclass(value):
                if value.__module__.startswith("trapmid_tf"):
                    seen[f"{value.__module__}.{value.__qualname__}"] = value
    return sorted(seen.items())


def documented_parameters(obj):
    """Parameters a caller passes, without self/cls/*args/**kwargs."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [
        p.name for p in signature.parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def test_the_api_is_walked():
    names = dict(public_objects())
    assert "trapmid_tf.defenses.trapmid.TrapMIDModel" in names
    assert len(names) > 60


@pytest.mark.parametrize(
    "name, obj", public_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_object_has_a_docstring_with_args(name, obj):
    docstring = inspect.getdoc(obj) or ""
    assert docstring.strip(), f"{name} has no docstring"
    if inspect.isclass(obj) and obj.__init__ is not object.__init__:
        docstring += "\n" + (inspect.getdoc(obj.__init__) or "")
    inherited = inspect.isclass(obj) and "__init__" not in vars(obj)
    if documented_parameters(obj) and not inherited:
        assert "Args:" in docstring or "Attributes:" in docstring, (
            f"{name} takes arguments but its docstring has no Args: (or Attributes:) section"
        )
