"""Model-inversion attacks: GAN priors trained with `fit`, and compiled inversion loops."""

from trapmid_tf.attacks.brep_mi import BREPMIAttack, HardLabelOracle
from trapmid_tf.attacks.gmi import GMIAttack
from trapmid_tf.attacks.inversion import AttackResult, minimize
from trapmid_tf.attacks.kedmi import KEDMIAttack
from trapmid_tf.attacks.lomma import LOMMAAttack, SurrogateDistiller, compute_p_reg
from trapmid_tf.attacks.lookup import LookupAttack
from trapmid_tf.attacks.mi_face import MIFaceAttack
from trapmid_tf.attacks.plgmi import PLGMIAttack
from trapmid_tf.attacks.plgmi_adaptive import (
    PLGMIAdaptiveAttack,
    defender_signatures,
    estimate_signatures,
)
from trapmid_tf.attacks.plgmi_prior import PLGMIPrior, select_top_n
from trapmid_tf.attacks.priors import GMIPrior, KEDMIPrior
from trapmid_tf.attacks.suite import (
    ATTACKS,
    REFERENCE_BUDGETS,
    InversionSettings,
    build_attack,
    load_prior,
    priors_needed,
    save_prior,
    train_gmi_prior,
    train_kedmi_prior,
    train_lomma_surrogates,
    train_plgmi_prior,
    training_steps,
)
from trapmid_tf.attacks.transfer_null import TransferNullAttack
from trapmid_tf.attacks.trigger_recovery import TriggerRecoveryAttack, compare_with_triggers

__all__ = [
    "ATTACKS",
    "AttackResult",
    "BREPMIAttack",
    "REFERENCE_BUDGETS",
    "GMIAttack",
    "GMIPrior",
    "HardLabelOracle",
    "InversionSettings",
    "KEDMIAttack",
    "KEDMIPrior",
    "LOMMAAttack",
    "LookupAttack",
    "MIFaceAttack",
    "PLGMIAdaptiveAttack",
    "PLGMIAttack",
    "PLGMIPrior",
    "SurrogateDistiller",
    "TransferNullAttack",
    "TriggerRecoveryAttack",
    "build_attack",
    "compare_with_triggers",
    "compute_p_reg",
    "defender_signatures",
    "estimate_signatures",
    "load_prior",
    "minimize",
    "priors_needed",
    "save_prior",
    "select_top_n",
    "train_gmi_prior",
    "train_kedmi_prior",
    "train_lomma_surrogates",
    "train_plgmi_prior",
    "training_steps",
]
