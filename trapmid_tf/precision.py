"""Opt-in bfloat16 mixed precision for training and attacks.

`use_precision("mixed_bfloat16")` sets Keras' global dtype policy: every layer built afterwards
keeps float32 variables and computes in bfloat16. The package keeps in float32 what needs it
under that policy: losses (from float32 copies of the logits, scores or features they read),
gradients and optimizer updates, the Trap-MID triggers, their blending and augmentation, and
the images the generators make, the attacks' latent vectors and results.
`use_precision("float32")` goes back to the default. Models built before the call keep the
policy they were built with, and a saved model keeps its policy when it is loaded again.

bfloat16 is fast on GPUs of compute capability 8.0 or more and on CPUs with bfloat16
instructions (AVX512_BF16 or AMX on x86, BF16 on Arm). Elsewhere TensorFlow emulates it,
usually slower than float32, so `use_precision` warns (`RuntimeWarning`) and still applies it.
"""

import warnings

import keras
import tensorflow as tf

PRECISIONS = ("float32", "mixed_bfloat16")
# /proc/cpuinfo flags of CPUs with bfloat16 instructions (x86 AVX512_BF16 and AMX, Arm BF16).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
MIN_BFLOAT16_GPU_CAPABILITY = (8, 0)


def use_precision(precision):
    """Sets the precision of every model built afterwards in this process.

    Args:
        precision: "float32" (the default) or "mixed_bfloat16" (float32 variables, bfloat16
            computations).

    Returns:
        The name of the dtype policy it replaced, to restore it with
        `keras.config.set_dtype_policy`.

    Raises:
        ValueError: If `precision` is not one of `PRECISIONS`.

    Warns:
        RuntimeWarning: For "mixed_bfloat16" on a machine with neither a bfloat16-capable GPU
            nor a CPU with bfloat16 instructions (emulated bfloat16, usually slower).

    Example:
        >>> previous = use_precision("mixed_bfloat16")
        >>> small_cnn((32, 32, 1), 5).dtype_policy.name
        'mixed_bfloat16'
        >>> use_precision(previous)
        'mixed_bfloat16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {list(PRECISIONS)}; received {precision!r}.")
    if precision == "mixed_bfloat16" and bfloat16_hardware() is None:
        warnings.warn(
            "use_precision('mixed_bfloat16'): this machine has no GPU of compute capability "
            f">= {'.'.join(map(str, MIN_BFLOAT16_GPU_CAPABILITY))} and its CPU reports none of "
            f"the bfloat16 instructions {list(BFLOAT16_CPU_FLAGS)}; TensorFlow emulates "
            "bfloat16 here, usually slower than float32.",
            RuntimeWarning,
            stacklevel=2,
        )
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(precision)
    return previous


def bfloat16_hardware(cpuinfo="/proc/cpuinfo"):
    """Names the hardware here that runs bfloat16 natively.

    Args:
        cpuinfo: The file listing the CPU's feature flags (Linux's /proc/cpuinfo).

    Returns:
        "GPU" for a GPU of compute capability >= 8.0, "CPU (<flag>)" for a CPU whose
        `cpuinfo` lists a flag of `BFLOAT16_CPU_FLAGS`, else None (also where there is no
        such file to read).
    """
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability is not None and tuple(capability) >= MIN_BFLOAT16_GPU_CAPABILITY:
            return "GPU"
    flags = cpu_flags(cpuinfo)
    for flag in BFLOAT16_CPU_FLAGS:
        if flag in flags:
            return f"CPU ({flag})"
    return None


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags listed in `path` (x86 "flags", Arm "Features"); empty without it."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return frozenset()
    flags = set()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)
