"""The privacy report: what a pipeline's results say, and report.md with its PNG grids.

Each module has one job and reads alone: `interpretation` (what the results say: chance, the
lookup floor, leakage per judge, the verdicts against the undefended model, the paper's
ratios; pure functions of the results dict), `tables` (Markdown tables and the text of an
estimate), `grids` (image grids and PNG files) and `markdown` (the text of report.md, and
`write`, which writes it with its grids). This package exports the names users call.
"""

from trapmid_tf.report.grids import attack_grid, image_grid, labelled_grid, save_png
from trapmid_tf.report.interpretation import paper_comparison, verdicts, works
from trapmid_tf.report.markdown import report_markdown, summary_table, write
from trapmid_tf.report.tables import estimate_text, markdown_table

__all__ = [
    "attack_grid",
    "estimate_text",
    "image_grid",
    "labelled_grid",
    "markdown_table",
    "paper_comparison",
    "report_markdown",
    "save_png",
    "summary_table",
    "verdicts",
    "works",
    "write",
]
