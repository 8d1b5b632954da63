"""The privacy-report experiment: results over training seeds, with intervals."""

from trapmid_tf.experiments.summary import summarize_seeds

__all__ = ["summarize_seeds"]
