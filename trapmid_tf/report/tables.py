"""Markdown tables, and the text of a value or an estimate in a table's cell."""


def markdown_table(header, rows):
    """Formats a markdown table; None cells print as an em dash, floats with 3 digits.

    Args:
        header: Column titles.
        rows: Sequences of cells (str, int, float or None), each as long as `header`.

    Returns:
        The table as a string ending in a newline.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"Each row needs {len(header)} cells; received {list(row)!r}.")
        lines.append("| " + " | ".join(cell_text(value) for value in row) + " |")
    return "\n".join(lines) + "\n"


def cell_text(value):
    """Formats one table cell.

    Args:
        value: A str, int, float or None.

    Returns:
        An em dash for None, a float with 3 digits, anything else as `str`.
    """
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def estimate_text(estimate):
    """Formats an estimate for a table.

    Args:
        estimate: An `Estimate.as_dict()`, a number, or None.

    Returns:
        `"mean [low, high]"` for an estimate; a number or None as it is.
    """
    if not isinstance(estimate, dict):
        return estimate
    return f"{estimate['mean']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"
