"""The experiment library behind the commands: the stages, the pipeline, results over seeds.

Each command of `trapmid_tf.cli` parses its flags and calls these modules, whose functions
take plain arguments and whose errors name settings, not flags: `target_config` and `targets`
(one target), `priors`, `attacks`, `evaluation` (one stage each; `attacks.run_attacks` and
`attack_scores` are the workflows of `trapmid-attack` and `trapmid-evaluate`), `pipeline`
(the whole privacy report: it runs the stages of `presets`, `target_stages`, `judges`,
`prior_stages` and `attack_stages` in order), `audit` (that report of a user's saved
classifier), `summary` (means over training seeds with intervals), `defenses` (the registry
of defense names).
"""

from trapmid_tf.experiments.summary import summarize_seeds

__all__ = ["summarize_seeds"]
