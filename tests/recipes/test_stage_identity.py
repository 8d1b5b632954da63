"""Stage identities that name the Adam update rule: stages trained with Keras's Adam, before
`TorchAdam`, must not be reused as if trained now."""

import dataclasses

from trapmid_tf.experiments import pipeline
from trapmid_tf.experiments.prior_stages import prior_budget
from trapmid_tf.experiments.target_config import identity


def test_only_targets_trained_with_adam_carry_its_rule():
    config = dict(model="small_cnn", optimizer="adam", out="runs/x", backup_dir=None)
    assert identity(config) == dict(model="small_cnn", optimizer="adam", adam_rule="pytorch")
    sgd = dict(config, optimizer="sgd")
    assert identity(sgd) == dict(model="small_cnn", optimizer="sgd")  # as before TorchAdam


def test_only_the_gan_priors_carry_the_adam_rule():
    settings = dataclasses.replace(pipeline.pipeline_settings("tiny"), public_split="classes")
    for name in ("gmi", "kedmi", "plgmi"):
        assert prior_budget(settings, name, seed=0)["adam_rule"] == "pytorch"
    # LOMMA's surrogates distil with SGD: their stages keep their identity.
    assert "adam_rule" not in prior_budget(settings, "lomma", seed=0)
