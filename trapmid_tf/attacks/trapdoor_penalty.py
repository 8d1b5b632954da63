"""PLG-MI++'s trapdoor penalty: how close target features sit to their class's trapdoor signature.

One definition, used by the penalised latent search (`trapmid_tf.attacks.plgmi_adaptive`), by
the penalised generator loss of the PLG-MI prior and by its penalised top-n selection
(`trapmid_tf.attacks.plgmi_prior`): the cosine similarity between a target feature and the
signature of the class it is meant to show.
"""

import numpy as np
from keras import ops

from trapmid_tf.models.features import feature_extractor
from trapmid_tf.validation import as_feature_matrix

COSINE_EPSILON = 1e-12  # Norm product below which the cosine is taken as 0 (zero vectors).


def signature_cosine(features, signatures):
    """Row-wise cosine similarity of features and the signatures of their classes.

    Args:
        features: `(batch, dims)` tensor.
        signatures: `(batch, dims)` tensor, the signature of each row's class.

    Returns:
        A `(batch,)` tensor in [-1, 1]; 0 where either vector is zero.
    """
    dots = ops.sum(features * signatures, axis=-1)
    norms = ops.norm(features, axis=-1) * ops.norm(signatures, axis=-1)
    return dots / ops.maximum(norms, COSINE_EPSILON)


def class_signature_cosine(features, labels, signatures):
    """The cosine of each feature with the signature of its label (the per-row penalty).

    Args:
        features: `(batch, dims)` target features (cast to float32).
        labels: `(batch,)` integer classes.
        signatures: `(num_classes, dims)` float32 tensor of trapdoor signatures.

    Returns:
        A `(batch,)` float32 tensor; its mean is PLG-MI++'s penalty.
    """
    return signature_cosine(
        ops.cast(features, "float32"), ops.take(signatures, ops.cast(labels, "int32"), axis=0)
    )


def checked_signatures(signatures, target):
    """`signatures` as a float32 array of one row per target class and its feature size.

    Args:
        signatures: Array-like `(num_classes, feature_dims)` trapdoor signatures.
        target: The attacked classifier (features convention of `trapmid_tf.models.features`).

    Returns:
        A float32 numpy array.

    Raises:
        ValueError: If the values are not finite or the shape is another.
    """
    signatures = as_feature_matrix(signatures, "signatures")
    expected = (int(target.output_shape[-1]), int(feature_extractor(target).output_shape[-1]))
    if signatures.shape != expected:
        raise ValueError(
            f"`signatures` must have shape {expected} (target classes, feature dims); "
            f"received {signatures.shape}."
        )
    return signatures.astype(np.float32)
