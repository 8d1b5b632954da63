"""The demo: trains an undefended and a Trap-MID target on the embedded digits and compares them.

Example:
    python recipes/demo.py --out=runs/demo

Each run is recipes/train_target.py with its digits defaults (any of its flags may be given,
except --defense); the results of both are printed side by side and written to
--out/summary.json.
"""

import os

from absl import app, flags

import train_target

FLAGS = flags.FLAGS
DEFENSES = ("none", "trapmid")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from trapmid_tf.files import write_json

    configs = {
        defense: train_target.config_from_flags(
            defense=defense, out=os.path.join(FLAGS.out, defense)
        )
        for defense in DEFENSES
    }
    summary = {defense: train_target.train(config) for defense, config in configs.items()}
    write_json(os.path.join(FLAGS.out, "summary.json"), summary)
    print(format_table(summary))


def format_table(summary):
    """Formats `{defense: results}` as a Markdown table."""
    def percent(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        "| defense | test accuracy | trapdoor accuracy | best epoch | seconds |",
        "|---|---|---|---|---|",
    ]
    for defense, results in summary.items():
        lines.append(
            f"| {defense} | {percent(results['test_accuracy'])} | "
            f"{percent(results['trapdoor_accuracy'])} | {results['best_epoch']}/"
            f"{results['epochs']} | {results['seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
