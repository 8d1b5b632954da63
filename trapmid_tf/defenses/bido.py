"""BiDO (Peng et al., KDD 2022): bilateral dependency optimisation with normalised HSIC.

For each hidden representation `h` of the classifier (flattened per sample) and a batch of
`m` samples, BiDO adds `lambda_xz * S(h, x) - lambda_yz * S(h, onehot(y))` to the
classification loss: the hiddens should depend little on the input and much on the label.
`S(a, b) = tr(R_a R_b)` is the "normalized CCA" HSIC of the reference, with
`R = K~ (K~ + epsilon m I)^-1`, `K~ = K H` and `H = I - 11^T / m`. The kernel on `h` and on
the input `x` is Gaussian, `exp(-D / (2 sigma^2 d))` with `D` the squared pairwise distances
and `d` the flattened dimension; on the labels it is linear (`Y Y^T`) by default, or Gaussian,
or inverse multiquadric `1 / sqrt(D + 1)`.

S is a statistic of the whole batch. Under `tf.distribute`, every replica computes it on its
own share of the batch and the loss uses the mean over replicas, which differs from S of the
global batch.
"""

import math
import re

import keras
from keras import ops

from trapmid_tf.contract import global_batch_mean
from trapmid_tf.defenses.mid import RegularizedClassifierModel, non_negative_float

HSIC_EPSILON = 1e-5
DEFAULT_SIGMA = 5.0
# The reference's BiDOLoss defaults, also the BiDO README's HSIC values for CelebA against
# GMI and KED-MI. The README gives (0.1, 2) for CelebA against VMI; for MNIST it publishes
# only its COCO measure's (1, 50), which does not carry over to HSIC.
DEFAULT_LAMBDA_XZ = 0.05
DEFAULT_LAMBDA_YZ = 0.5
LABEL_KERNELS = ("linear", "gaussian", "imq")


# === Kernels and HSIC ===


def _flat(features):
    """`(batch, ...)` features as `(batch, size)` rows, at least float32 (kernels need it)."""
    features = ops.convert_to_tensor(features)
    if keras.backend.standardize_dtype(features.dtype) != "float64":
        features = ops.cast(features, "float32")
    sample_size = math.prod(features.shape[1:])
    return ops.reshape(features, (-1, sample_size))


def squared_distances(features):
    """Squared Euclidean distances between all pairs of samples.

    Args:
        features: Shape `(m, ...)`; each sample is flattened.

    Returns:
        Shape `(m, m)`: `|a_i|^2 + |a_j|^2 - 2 a_i.a_j`, made non-negative with `abs` (as the
        reference) against rounding.
    """
    flat = _flat(features)
    norms = ops.sum(ops.square(flat), axis=1, keepdims=True)
    return ops.abs(norms - 2.0 * ops.matmul(flat, ops.transpose(flat)) + ops.transpose(norms))


def gaussian_kernel(features, sigma=DEFAULT_SIGMA):
    """Gaussian kernel matrix `exp(-D / (2 sigma^2 d))`, d the flattened sample size.

    Args:
        features: Shape `(m, ...)`; each sample is flattened.
        sigma: Bandwidth, > 0.

    Returns:
        Shape `(m, m)`.
    """
    flat = _flat(features)
    scale = 2.0 * float(sigma) ** 2 * flat.shape[-1]
    return ops.exp(-squared_distances(flat) / scale)


def linear_kernel(features):
    """Linear kernel matrix `A A^T` of the flattened samples `A`, shape `(m, m)`."""
    flat = _flat(features)
    return ops.matmul(flat, ops.transpose(flat))


def imq_kernel(features):
    """Inverse multiquadric kernel matrix `1 / sqrt(D + 1)`, shape `(m, m)`."""
    return ops.rsqrt(squared_distances(features) + 1.0)


def label_kernel(onehot_labels, kind="linear", sigma=DEFAULT_SIGMA):
    """Kernel matrix on one-hot labels.

    Args:
        onehot_labels: Shape `(m, num_classes)`.
        kind: "linear", "gaussian" (d = num_classes) or "imq".
        sigma: Bandwidth of the Gaussian kernel.

    Returns:
        Shape `(m, m)`.

    Raises:
        ValueError: On an unknown `kind`.
    """
    _check_label_kernel(kind)
    if kind == "gaussian":
        return gaussian_kernel(onehot_labels, sigma)
    if kind == "imq":
        return imq_kernel(onehot_labels)
    return linear_kernel(onehot_labels)


def _check_label_kernel(kind):
    if kind not in LABEL_KERNELS:
        raise ValueError(f"`kernel_y` must be one of {LABEL_KERNELS}; received {kind!r}.")


def _normalized_operator(kernel, epsilon):
    """`R = K~ (K~ + epsilon m I)^-1` with `K~ = K H`.

    `K~` commutes with `(K~ + c I)^-1`, so `R` is also the solution `X` of
    `(K~ + c I) X = K~`; a linear solve is more accurate than forming the inverse.
    """
    m = ops.shape(kernel)[0]
    identity = ops.eye(m, dtype=kernel.dtype)
    centred = kernel - ops.mean(kernel, axis=1, keepdims=True)  # K H: row means removed
    ridge = epsilon * ops.cast(m, kernel.dtype)
    return ops.solve(centred + ridge * identity, centred)


def normalized_hsic(kernel_a, kernel_b, epsilon=HSIC_EPSILON):
    """The reference's "normalized CCA" HSIC, `S = tr(R_a R_b)`, of two kernel matrices.

    Args:
        kernel_a: Kernel matrix of the first variable, shape `(m, m)`.
        kernel_b: Kernel matrix of the second variable, shape `(m, m)`.
        epsilon: Ridge `epsilon * m` added before inverting.

    Returns:
        A scalar. For two identical kernels it is about the rank of the centred kernel
        (at most `m - 1`); it is 0 when either centred kernel is 0.
    """
    r_a = _normalized_operator(ops.convert_to_tensor(kernel_a), epsilon)
    r_b = _normalized_operator(ops.convert_to_tensor(kernel_b), epsilon)
    return ops.sum(r_a * ops.transpose(r_b))


def bido_terms(
    images,
    onehot_labels,
    hiddens,
    kernel_y="linear",
    sigma=DEFAULT_SIGMA,
    epsilon=HSIC_EPSILON,
):
    """Sums of `S(h, x)` and `S(h, y)` over the hidden representations.

    Args:
        images: Input batch `x`, shape `(m, ...)`.
        onehot_labels: One-hot labels `y`, shape `(m, num_classes)`.
        hiddens: List of hidden representations, each of shape `(m, ...)`.
        kernel_y: Kernel on the labels, see `label_kernel`.
        sigma: Bandwidth of the Gaussian kernels.
        epsilon: HSIC ridge, see `normalized_hsic`.

    Returns:
        `(hsic_xz, hsic_yz)`: `sum_h S(h, x)` and `sum_h S(h, y)`. The BiDO loss is
        `lambda_xz * hsic_xz - lambda_yz * hsic_yz`.
    """
    kernel_x = gaussian_kernel(images, sigma)
    kernel_labels = label_kernel(onehot_labels, kernel_y, sigma)
    hsic_xz = hsic_yz = 0.0
    for hidden in hiddens:
        kernel_h = gaussian_kernel(hidden, sigma)
        hsic_xz += normalized_hsic(kernel_h, kernel_x, epsilon)
        hsic_yz += normalized_hsic(kernel_h, kernel_labels, epsilon)
    return hsic_xz, hsic_yz


# === Hidden layers of the classifier zoo ===


def _numbered(names, pattern):
    """Maps the first group (an int) of every name fully matching `pattern` to the name."""
    matches = (re.fullmatch(pattern, name) for name in names)
    return {int(m.group(1)): m.group(0) for m in matches if m}


def default_hidden_layers(classifier):
    """Names of the layers whose outputs BiDO constrains, for the `trapmid_tf.models` zoo.

    - vgg16_bn: the outputs of pooled blocks 1-4 and the feature ("feature_bn"), the
      reference's VGG16_BiDO.
    - ir18: the outputs of the four stages (`layer{1..4}_block1_out`), the reference's
      IR18_BiDO.
    - facenet64, ir152: the outputs of the four IR stages (their last units' sums); the
      reference has no BiDO variant of these.
    - small_cnn: the outputs of its three pooled blocks and the feature ("feature_relu").

    Args:
        classifier: A classifier built by `trapmid_tf.models` (recognised by layer names).

    Returns:
        A tuple of layer names.

    Raises:
        ValueError: If the architecture is not recognised; pass `hidden_layers` then.
    """
    names = {layer.name for layer in classifier.layers}
    pools = _numbered(names, r"block(\d+)_pool")
    stages = _numbered(names, r"layer(\d+)_block1_out")
    ir_stages = {
        stage: _numbered(names, rf"stage{stage}_unit(\d+)_add") for stage in range(1, 5)
    }
    if sorted(pools) == [1, 2, 3, 4, 5] and "feature_bn" in names:
        return (*(pools[i] for i in range(1, 5)), "feature_bn")
    if sorted(pools) == [1, 2, 3] and "feature_relu" in names:
        return (*(pools[i] for i in range(1, 4)), "feature_relu")
    if sorted(stages) == [1, 2, 3, 4]:
        return tuple(stages[i] for i in range(1, 5))
    if all(ir_stages.values()):
        return tuple(units[max(units)] for units in ir_stages.values())
    raise ValueError(
        f"`hidden_layers` must be given for classifier {classifier.name!r}: its layer names "
        "match none of the trapmid_tf.models architectures (vgg16_bn, ir18, facenet64, "
        "ir152, small_cnn) whose BiDO layers are known."
    )


def _hidden_view(classifier, hidden_layers):
    """A model sharing `classifier`'s layers that outputs `[*hiddens, logits]`."""
    names = [layer.name for layer in classifier.layers]
    missing = [name for name in hidden_layers if name not in names]
    if missing or not hidden_layers:
        raise ValueError(
            "`hidden_layers` must be a non-empty list of layer names of the classifier; "
            f"received {list(hidden_layers)!r}, of which {missing!r} are not layers of "
            f"{classifier.name!r}."
        )
    outputs = [classifier.get_layer(name).output for name in hidden_layers]
    return keras.Model(
        classifier.inputs, [*outputs, classifier.outputs[0]], name=f"{classifier.name}_hiddens"
    )


# === The model ===


@keras.saving.register_keras_serializable(package="trapmid_tf")
class BiDOModel(RegularizedClassifierModel):
    """Trains a classifier with BiDO-HSIC (Peng et al., KDD 2022) through `fit`.

    The loss is `loss(y, logits) + lambda_xz * sum_h S(h, x) - lambda_yz * sum_h S(h, y)` over
    the outputs `h` of `hidden_layers`, with the kernels and `S` of this module's docstring.
    Calling the model runs the classifier, which is also what `export_classifier` writes.
    Under `tf.distribute` each replica computes S on its share of the batch (S couples the
    samples of a batch), and the replicas' mean is used.

    Metrics: loss, main_loss, hsic_xz, hsic_yz (sums over the hiddens), accuracy.

    Args:
        classifier: A functional Keras classifier mapping images to logits.
        hidden_layers: Names of the classifier's layers whose outputs are constrained. None
            for the defaults of `default_hidden_layers` (zoo architectures only).
        lambda_xz: Weight of the input dependency `S(h, x)`, >= 0. Default 0.05.
        lambda_yz: Weight of the label dependency `S(h, y)`, >= 0. Default 0.5.
        kernel_y: Kernel on the one-hot labels: "linear", "gaussian" or "imq".
        sigma: Bandwidth of the Gaussian kernels, > 0.
        **kwargs: Standard `keras.Model` arguments.

    Raises:
        ValueError: On bad weights, kernel or bandwidth, unknown layer names, or an
            unrecognised architecture without `hidden_layers`.

    Example:
        >>> model = BiDOModel(classifier, lambda_xz=0.05, lambda_yz=0.5)
        >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
        >>> model.fit(train.batch(64), epochs=10)  # doctest: +SKIP
        >>> model.export_classifier("classifier.keras")  # doctest: +SKIP
    """

    regularizer_metrics = ("hsic_xz", "hsic_yz")

    def __init__(
        self,
        classifier,
        hidden_layers=None,
        lambda_xz=DEFAULT_LAMBDA_XZ,
        lambda_yz=DEFAULT_LAMBDA_YZ,
        kernel_y="linear",
        sigma=DEFAULT_SIGMA,
        **kwargs,
    ):
        super().__init__(classifier, **kwargs)
        self.lambda_xz = non_negative_float("lambda_xz", lambda_xz)
        self.lambda_yz = non_negative_float("lambda_yz", lambda_yz)
        self.sigma = non_negative_float("sigma", sigma, allow_zero=False)
        _check_label_kernel(kernel_y)
        self.kernel_y = kernel_y
        if hidden_layers is None:
            hidden_layers = default_hidden_layers(classifier)
        elif isinstance(hidden_layers, str):
            raise ValueError(
                f"`hidden_layers` must be a list of layer names; received the string "
                f"{hidden_layers!r}."
            )
        self.hidden_layers = tuple(hidden_layers)
        self.hidden_view = _hidden_view(classifier, self.hidden_layers)
        self.built = True

    def call(self, images, training=False):
        """Runs the classifier.

        Args:
            images: Float32 NHWC images in [0, 1].
            training: Whether the classifier runs in training mode.

        Returns:
            Logits, `(batch, num_classes)`.
        """
        return self.classifier(images, training=training)

    def _training_forward(self, images, labels):
        *hiddens, logits = self.hidden_view(images, training=True)
        onehot = ops.one_hot(labels, self.num_classes)
        hsic_xz, hsic_yz = bido_terms(images, onehot, hiddens, self.kernel_y, self.sigma)
        hsic_xz, hsic_yz = global_batch_mean(hsic_xz), global_batch_mean(hsic_yz)
        regularizer = self.lambda_xz * hsic_xz - self.lambda_yz * hsic_yz
        return logits, regularizer, {"hsic_xz": hsic_xz, "hsic_yz": hsic_yz}

    def _trained_variables(self):
        return self.classifier.trainable_variables

    def _deployable_classifier(self):
        return self.classifier

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_layers": list(self.hidden_layers),
            "lambda_xz": self.lambda_xz,
            "lambda_yz": self.lambda_yz,
            "kernel_y": self.kernel_y,
            "sigma": self.sigma,
        }
