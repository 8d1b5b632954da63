"""trapmid_tf: Trap-MID model-inversion defense, MI attacks and evaluation for Keras 3."""

from trapmid_tf.startup import import_tensorflow, startup_log

import_tensorflow()

from trapmid_tf import attacks, data, defenses, layers, metrics, models, report
from trapmid_tf.callbacks import TrapMIDCallback
from trapmid_tf.defenses import NegLSLoss, TrapMIDModel
from trapmid_tf.optimizers import TorchSGD
from trapmid_tf.precision import use_precision

__all__ = [
    "NegLSLoss",
    "TrapMIDCallback",
    "TrapMIDModel",
    "TorchSGD",
    "attacks",
    "data",
    "defenses",
    "layers",
    "metrics",
    "models",
    "report",
    "startup_log",
    "use_precision",
]
__version__ = "0.1.0"
