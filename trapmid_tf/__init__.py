"""trapmid_tf: Trap-MID model-inversion defense, MI attacks and evaluation for Keras 3.

Importing the package changes nothing in the process and imports neither TensorFlow nor
Keras. The first use of a name of the public API (`tm.models`, `tm.TrapMIDModel`, ...) imports
all of it, TensorFlow included, which also registers the package's layers and models for
`keras.models.load_model`. `trapmid_tf.startup` alone imports nothing: call
`trapmid_tf.startup.import_tensorflow()` first for TensorFlow's quiet start-up and its oneDNN
CPU kernels.
"""

import importlib

# The public API: subpackages and modules, and the names re-exported from them.
_MODULES = ("attacks", "callbacks", "data", "defenses", "layers", "metrics", "models", "report")
_NAMES = {
    "NegLSLoss": "defenses",
    "TrapMIDCallback": "callbacks",
    "TrapMIDModel": "defenses",
    "TorchAdam": "optimizers",
    "TorchSGD": "optimizers",
    "use_precision": "precision",
}
# Loaded alone: they must be usable before TensorFlow is imported.
_STARTUP = ("startup", "startup_log")

__all__ = sorted([*_MODULES, *_NAMES, *_STARTUP])


def __getattr__(name):
    """Loads the public API on the first use of one of its names (PEP 562)."""
    if name in _STARTUP:
        startup = importlib.import_module("trapmid_tf.startup")
        return startup if name == "startup" else startup.startup_log
    if name not in _MODULES and name not in _NAMES:
        raise AttributeError(f"module 'trapmid_tf' has no attribute {name!r}")
    for module in _MODULES:
        importlib.import_module(f"trapmid_tf.{module}")
    for exported, module in _NAMES.items():
        globals()[exported] = getattr(importlib.import_module(f"trapmid_tf.{module}"), exported)
    return globals()[name]


def __dir__():
    """The module's names, with those `__getattr__` loads."""
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"
