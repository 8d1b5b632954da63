"""Defenses: Trap-MID and the baselines it is compared with."""

from trapmid_tf.defenses.bido import BiDOModel, normalized_hsic
from trapmid_tf.defenses.mid import MIDModel, gaussian_kl
from trapmid_tf.defenses.negls import NegLSLoss, NegLSScheduler, negls_factor
from trapmid_tf.defenses.sign_step import SignedGradientStep
from trapmid_tf.defenses.trapmid import TrapMIDModel, build_discriminator
from trapmid_tf.defenses.trapmid_fast import FastTrapMIDModel

__all__ = [
    "BiDOModel",
    "FastTrapMIDModel",
    "MIDModel",
    "gaussian_kl",
    "normalized_hsic",
    "NegLSLoss",
    "NegLSScheduler",
    "SignedGradientStep",
    "TrapMIDModel",
    "build_discriminator",
    "negls_factor",
]
