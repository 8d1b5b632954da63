"""Trigger leakage: do Trap-MID's triggers give away what their classes look like?

Optimised triggers are pushed through the classifier towards their classes, the same gradient an
inversion attack follows, so a trigger may itself look like its class. The evaluation model (the
independent judge of reconstructions) classifies

- each trigger as an image (triggers are images in [0, 1] of the input shape), and
- its class-specific part: the trigger minus the mean trigger over all classes, which removes
  what all triggers share; the difference lies in [-1, 1] and is mapped back into [0, 1] by a
  per-image min-max stretch ("minmax", how the reference saves images, so the part is seen at
  full contrast) or by `0.5 + 0.5 d` ("shift", keeps the scale: no difference is mid-grey).

Top-1 is the fraction classified as the trigger's own class; chance is 1 / the number of
classes of the evaluation model.
"""

import numpy as np

from trapmid_tf.metrics.accuracy import top_k_accuracy
from trapmid_tf.metrics.features import batched_predict

MAPPINGS = ("minmax", "shift")


def _as_triggers(triggers):
    triggers = np.asarray(triggers, dtype=np.float32)
    if triggers.ndim != 4 or len(triggers) < 2:
        raise ValueError(
            "`triggers` must be an NHWC array (num_classes >= 2, H, W, C); received shape "
            f"{triggers.shape}."
        )
    if not np.all(np.isfinite(triggers)) or triggers.min() < 0.0 or triggers.max() > 1.0:
        raise ValueError(
            "`triggers` must lie in [0, 1]; received values in "
            f"[{np.nanmin(triggers)}, {np.nanmax(triggers)}]."
        )
    return triggers


def class_specific_part(triggers, mapping="minmax"):
    """Each trigger minus the mean trigger, mapped into [0, 1].

    Args:
        triggers: Float `(num_classes, H, W, C)` triggers in [0, 1], num_classes >= 2.
        mapping: "minmax" (per-image stretch `(d - min d) / (max d - min d)`; a constant
            difference maps to 0.5) or "shift" (`0.5 + 0.5 d`).

    Returns:
        A float32 array of the triggers' shape in [0, 1].

    Raises:
        ValueError: On bad triggers or an unknown mapping.
    """
    triggers = _as_triggers(triggers)
    if mapping not in MAPPINGS:
        raise ValueError(f"`mapping` must be one of {MAPPINGS}; received {mapping!r}.")
    difference = triggers.astype(np.float64) - triggers.mean(axis=0, dtype=np.float64)
    if mapping == "shift":
        return (0.5 + 0.5 * difference).astype(np.float32)
    low = difference.min(axis=(1, 2, 3), keepdims=True)
    spread = difference.max(axis=(1, 2, 3), keepdims=True) - low
    stretched = np.divide(
        difference - low, spread, out=np.full_like(difference, 0.5), where=spread > 0
    )
    return stretched.astype(np.float32)


def trigger_leakage(evaluation_model, triggers, labels=None, mapping="minmax", batch_size=100):
    """The evaluation model's top-1 on the triggers and on their class-specific parts.

    Args:
        evaluation_model: Keras classifier, float32 NHWC images in [0, 1] -> logits.
        triggers: Float `(num_classes, H, W, C or 1)` triggers in [0, 1]; one channel is
            broadcast to the model's input channels (as `BlendTrigger` does).
        labels: Evaluation-model class of each trigger; None for `0, 1, ...` (trigger c belongs
            to class c, as the attacks assume).
        mapping: How the class-specific part is mapped into [0, 1] (`class_specific_part`).
        batch_size: Images per forward pass.

    Returns:
        A dict: `trigger_top1`, `class_part_top1` (fractions in [0, 1]) and `chance`
        (1 / number of evaluation classes).

    Raises:
        ValueError: If the triggers do not fit the model's input or `labels` is invalid.
    """
    triggers = _as_triggers(triggers)
    input_shape = tuple(evaluation_model.input_shape[1:])
    if triggers.shape[1:3] != input_shape[:2] or triggers.shape[-1] not in (1, input_shape[-1]):
        raise ValueError(
            f"`triggers` must have shape (num_classes, {input_shape[0]}, {input_shape[1]}, "
            f"{input_shape[2]} or 1) to fit the evaluation model; received {triggers.shape}."
        )
    triggers = np.broadcast_to(triggers, (len(triggers), *input_shape))
    labels = np.arange(len(triggers)) if labels is None else np.asarray(labels)
    num_classes = int(evaluation_model.output_shape[-1])
    parts = class_specific_part(triggers, mapping)
    return {
        "trigger_top1": top_k_accuracy(
            batched_predict(evaluation_model, triggers, batch_size), labels, 1
        ),
        "class_part_top1": top_k_accuracy(
            batched_predict(evaluation_model, parts, batch_size), labels, 1
        ),
        "chance": 1.0 / num_classes,
    }
