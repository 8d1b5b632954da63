"""Defenses: Trap-MID and the baselines it is compared with."""

from trapmid_tf.defenses.bido import BiDOModel
from trapmid_tf.defenses.mid import MIDModel
from trapmid_tf.defenses.negls import NegLSLoss, NegLSScheduler
from trapmid_tf.defenses.sign_step import SignedGradientStep
from trapmid_tf.defenses.trapmid import TrapMIDModel, build_discriminator
from trapmid_tf.defenses.trapmid_fast import FastTrapMIDModel

__all__ = [
    "BiDOModel",
    "FastTrapMIDModel",
    "MIDModel",
    "NegLSLoss",
    "NegLSScheduler",
    "SignedGradientStep",
    "TrapMIDModel",
    "build_discriminator",
]
