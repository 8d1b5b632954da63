"""IR-50 / IR-152 face classifiers (FaceNet64 and IR152 in the Trap-MID reference).

The body follows face.evoLVe's improved-residual (IR) backbone; the head is
BN2d -> Dropout(0.5) -> Flatten -> Dense(512) -> BN1d (the 512-d feature) -> Dense logits.
`facenet_eval` is the reference's face evaluation model ("FaceNet", KED-MI's
`FaceNet_95.88.tar`): the IR-50 body and head at 112x112, after a bilinear resize inside the model.
"""

import keras
import tensorflow as tf

from trapmid_tf.models import common, torch_layers
from trapmid_tf.validation import check_input_shape, check_positive_int

STAGE_DEPTHS = (64, 128, 256, 512)
IR50_UNITS = (3, 4, 14, 3)
IR152_UNITS = (3, 8, 36, 3)
FEATURE_DIM = 512
DROPOUT_RATE = 0.5
MIN_SIZE = 2 ** len(STAGE_DEPTHS)
EVALUATION_SIDE = 112  # input side of the reference's FaceNet evaluation model


def _conv(x, filters, kernel_size, strides, padding, name):
    return torch_layers.conv2d(
        x,
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=keras.initializers.GlorotUniform(),
        name=name,
    )


def _bottleneck_ir(x, depth, strides, name, torch_running_variance):
    """IR unit: BN -> conv3x3 -> PReLU -> conv3x3 (stride) -> BN, plus a shortcut; no activation.

    The shortcut subsamples (a 1x1 max pool) when the channel count is kept, else it is a
    strided 1x1 conv + BN.
    """
    if x.shape[-1] == depth:
        shortcut = x
        if strides != 1:
            shortcut = keras.layers.MaxPooling2D(1, strides=strides, name=f"{name}_subsample")(x)
    else:
        shortcut = _conv(x, depth, 1, strides, 0, f"{name}_shortcut_conv")
        shortcut = torch_layers.batch_norm(
            f"{name}_shortcut_bn", torch_running_variance=torch_running_variance
        )(shortcut)
    y = torch_layers.batch_norm(f"{name}_bn1", torch_running_variance=torch_running_variance)(x)
    y = _conv(y, depth, 3, 1, 1, f"{name}_conv1")
    y = torch_layers.prelu(f"{name}_prelu")(y)
    y = _conv(y, depth, 3, strides, 1, f"{name}_conv2")
    y = torch_layers.batch_norm(f"{name}_bn2", torch_running_variance=torch_running_variance)(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def _ir_body(inputs, units, torch_running_variance):
    """Stem (conv3x3 + BN + PReLU) and four IR stages; the first unit of each stage has stride 2."""
    x = _conv(inputs, STAGE_DEPTHS[0], 3, 1, 1, "stem_conv")
    x = torch_layers.batch_norm("stem_bn", torch_running_variance=torch_running_variance)(x)
    x = torch_layers.prelu("stem_prelu")(x)
    for stage, (depth, count) in enumerate(zip(STAGE_DEPTHS, units), start=1):
        for unit in range(count):
            x = _bottleneck_ir(
                x, depth, 2 if unit == 0 else 1, f"stage{stage}_unit{unit}",
                torch_running_variance,
            )
    return x


def _ir_classifier(
    arch, units, input_shape, num_classes, weights, name, dropout_seed, resize=None,
    min_size=MIN_SIZE, head_dense_xavier=False, torch_running_variance=False
):
    """IR body and feature head; `resize` (a layer) maps the input to the body's size first.

    The head Dense uses PyTorch's `nn.Linear` default init, or Xavier-uniform weights and
    zero bias when `head_dense_xavier` (the head inside face.evoLVe's 112x112 backbone).
    `torch_running_variance` goes to every batch norm (`torch_layers.batch_norm`).
    """
    input_shape = check_input_shape(input_shape, min_size, arch)
    check_positive_int("num_classes", num_classes)
    inputs = keras.Input(input_shape, name="image")
    x = _ir_body(inputs if resize is None else resize(inputs), units, torch_running_variance)
    x = torch_layers.batch_norm("head_bn2d", torch_running_variance=torch_running_variance)(x)
    x = keras.layers.Dropout(DROPOUT_RATE, seed=dropout_seed, name="head_dropout")(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    if head_dense_xavier:
        dense = keras.layers.Dense(
            FEATURE_DIM, kernel_initializer=torch_layers.xavier_uniform(), name="head_dense"
        )
    else:
        dense = torch_layers.torch_default_dense(FEATURE_DIM, x.shape[-1], "head_dense")
    features = torch_layers.batch_norm(
        "feature_bn", torch_running_variance=torch_running_variance
    )(dense(x))
    return common.classifier_model(inputs, features, num_classes, weights, name)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class BilinearResize(keras.layers.Layer):
    """Bilinear resize of NHWC images to a fixed size, as PyTorch's `F.interpolate`.

    `align_corners=True` maps the corner pixels of input and output onto each other (PyTorch
    `align_corners=True`, kornia's `augmentation.Resize` default); False uses half-pixel
    centres (PyTorch `align_corners=False`, `tf.image.resize`, and PIL's bilinear upscaling).
    No antialiasing. Differentiable with respect to the images.

    Args:
        height: Output height, >= 1.
        width: Output width, >= 1.
        align_corners: Whether corner pixels are aligned (see above).
        **kwargs: Standard layer arguments.
    """

    def __init__(self, height, width, align_corners, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("height", height)
        check_positive_int("width", width)
        if not isinstance(align_corners, bool):
            raise ValueError(f"`align_corners` must be True or False; received {align_corners!r}.")
        self.height, self.width, self.align_corners = int(height), int(width), align_corners

    def call(self, images):
        """Resizes the images.

        Args:
            images: Float NHWC images.

        Returns:
            The images at `(height, width)`, float32.
        """
        return tf.raw_ops.ResizeBilinear(
            images=images,
            size=[self.height, self.width],
            align_corners=self.align_corners,
            half_pixel_centers=not self.align_corners,
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(height=self.height, width=self.width, align_corners=self.align_corners)
        return config


def facenet64(
    input_shape, num_classes, weights=None, name="facenet64", dropout_seed=None,
    torch_running_variance=False,
):
    """Builds FaceNet64: an IR-50 body (units 3, 4, 14, 3) and the 512-d BN feature head.

    Body convs use Xavier-uniform initialisation (as face.evoLVe); the head Dense layers use
    PyTorch's `nn.Linear` default. Stride-2 convs pad symmetrically (explicit zero padding).

    Args:
        input_shape: (height, width, channels), height and width >= 16 (64 in the reference).
        num_classes: Number of logits, >= 1.
        weights: None, or a local `.weights.h5` / `.keras` file to load after building.
        name: Model name.
        dropout_seed: Optional int seed of the head dropout, for reproducible training.
        torch_running_variance: Whether the batch norms update their moving variance as
            PyTorch does (`FusedBatchNorm`), e.g. to train as the reference; else as Keras.

    Returns:
        A functional `keras.Model` mapping float32 images in [0, 1] to logits; the final Dense is
        named "logits".

    Raises:
        ValueError: On a bad `input_shape` or `num_classes`.
        FileNotFoundError: If `weights` names a missing file.
    """
    return _ir_classifier(
        "facenet64", IR50_UNITS, input_shape, num_classes, weights, name, dropout_seed,
        torch_running_variance=torch_running_variance,
    )


def ir152(
    input_shape, num_classes, weights=None, name="ir152", dropout_seed=None,
    torch_running_variance=False,
):
    """Builds IR152: `facenet64` with an IR-152 body (units 3, 8, 36, 3).

    Args:
        input_shape, num_classes, weights, name, dropout_seed, torch_running_variance: As
            `facenet64`.

    Returns:
        The model, as `facenet64` describes it.

    Raises:
        ValueError, FileNotFoundError: As `facenet64`.
    """
    return _ir_classifier(
        "ir152", IR152_UNITS, input_shape, num_classes, weights, name, dropout_seed,
        torch_running_variance=torch_running_variance,
    )


def facenet_eval(
    input_shape, num_classes, weights=None, name="facenet_eval", dropout_seed=None,
    align_corners=True, torch_running_variance=False,
):
    """Builds the reference's face evaluation classifier ("FaceNet": IR-50 at 112x112).

    The input (64x64 in the reference's attacks) is first resized to 112x112 bilinearly inside
    the model (`BilinearResize`), then goes through the IR-50 body (512x7x7) and the head
    BN2d -> Dropout(0.5) -> Flatten -> Dense(512) -> BN1d (the 512-d feature) -> Dense logits.
    The body convs and the head Dense are Xavier-uniform (face.evoLVe's 112x112 backbone
    initialises its own head Dense too); the logits Dense uses PyTorch's default. Layer names
    are those of `facenet64`, so `load_torch_weights(..., architecture="facenet_eval")` maps
    KED-MI's `FaceNet_95.88.tar`.

    How the reference resizes: PLG-MI's attack accuracy and every KNN distance call kornia's
    `augmentation.Resize((112, 112))`, bilinear with `align_corners=True` (the default here);
    the GMI / KED-MI / LOMMA accuracies go through `low2high`, which truncates to uint8, resizes
    with PIL bilinear (half-pixel centres: `align_corners=False`) and rounds to uint8 again. The
    uint8 steps are not part of this model.

    Args:
        input_shape: (height, width, channels) of the images given to the model.
        num_classes: Number of logits, >= 1 (1000 CelebA identities in the reference).
        weights: None, or a local `.weights.h5` / `.keras` file to load after building.
        name: Model name.
        dropout_seed: Optional int seed of the head dropout, for reproducible training.
        align_corners: The resize's corner convention; see above.
        torch_running_variance: As `facenet64`.

    Returns:
        A functional `keras.Model` mapping float32 images in [0, 1] to logits; the final Dense is
        named "logits" and its input is the 512-d feature.

    Raises:
        ValueError: On a bad `input_shape`, `num_classes` or `align_corners`.
        FileNotFoundError: If `weights` names a missing file.
    """
    resize = BilinearResize(EVALUATION_SIDE, EVALUATION_SIDE, align_corners, name="resize")
    return _ir_classifier(
        "facenet_eval", IR50_UNITS, input_shape, num_classes, weights, name, dropout_seed,
        resize=resize, min_size=1, head_dense_xavier=True,
        torch_running_variance=torch_running_variance,
    )
