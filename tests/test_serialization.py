"""The shared serialization case applied to every registered layer and model of ours.

Each expected config below is written by hand from the constructor arguments, not taken
from another instance's `get_config`.
"""

import keras
import numpy as np
import pytest

from tests.serialization_case import SerializableCase, check_serializable
from trapmid_tf.layers.augment import TrapdoorAugment
from trapmid_tf.layers.fast_grad_conv import FastGradConv2D
from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm
from trapmid_tf.layers.triggers import BlendTrigger
from trapmid_tf.metrics.fid import InceptionPreprocessing
from trapmid_tf.models.cgan import ConditionalBatchNorm, ResNetGenerator, SNEmbedding
from trapmid_tf.models.gan import MinibatchDiscrimination
from trapmid_tf.models.irse import BilinearResize

_RNG = np.random.default_rng(0)
IMAGES = _RNG.uniform(size=(4, 4, 4, 1)).astype("float32")
RGB = _RNG.uniform(size=(4, 8, 8, 3)).astype("float32")
FEATURES = _RNG.normal(size=(4, 5)).astype("float32")
LABELS = np.array([0, 2, 1, 2], "int32")

CASES = [
    SerializableCase(
        name="blend_trigger",
        make=lambda: BlendTrigger(3, (8, 8, 3), alpha=0.1, channels=1, seed=7, name="trigger"),
        config=dict(
            name="trigger", num_classes=3, image_shape=(8, 8, 3), alpha=0.1, channels=1, seed=7
        ),
        inputs=[RGB, LABELS],
        output_shape=(8, 8, 3),
    ),
    SerializableCase(
        name="trapdoor_augment",
        make=lambda: TrapdoorAugment(
            crop_scale=(0.7, 0.9), rotation_degrees=10.0, probability=0.3, seed=15, name="aug"
        ),
        config=dict(
            name="aug", crop_scale=(0.7, 0.9), rotation_degrees=10.0, probability=0.3, seed=15
        ),
        inputs=[RGB],
        output_shape=(8, 8, 3),
        trainable=False,
    ),
    SerializableCase(
        name="fast_grad_conv2d",
        make=lambda: FastGradConv2D(2, 3, strides=2, padding="same", name="conv"),
        config=dict(
            name="conv", filters=2, kernel_size=(3, 3), strides=(2, 2), padding="same"
        ),
        inputs=[RGB],
        output_shape=(4, 4, 2),
        base=keras.layers.Conv2D,
    ),
    SerializableCase(
        name="fused_batch_norm",
        make=lambda: FusedBatchNorm(
            momentum=0.9, epsilon=1e-5, torch_running_variance=True, name="bn"
        ),
        config=dict(name="bn", momentum=0.9, epsilon=1e-5, torch_running_variance=True),
        inputs=[RGB],
        output_shape=(8, 8, 3),
        base=keras.layers.BatchNormalization,
    ),
    SerializableCase(
        name="bilinear_resize",
        make=lambda: BilinearResize(6, 5, align_corners=True, name="resize"),
        config=dict(name="resize", height=6, width=5, align_corners=True),
        inputs=[IMAGES],
        output_shape=(6, 5, 1),
        trainable=False,
    ),
    SerializableCase(
        name="inception_preprocessing",
        make=lambda: InceptionPreprocessing(image_size=7, name="inception"),
        config=dict(name="inception", image_size=7),
        inputs=[IMAGES],
        output_shape=(7, 7, 3),
        trainable=False,
    ),
    SerializableCase(
        name="minibatch_discrimination",
        make=lambda: MinibatchDiscrimination(kernels=4, kernel_dim=3, name="mbd"),
        config=dict(name="mbd", kernels=4, kernel_dim=3),
        inputs=[FEATURES],
        output_shape=(4,),
    ),
    SerializableCase(
        name="conditional_batch_norm",
        make=lambda: ConditionalBatchNorm(3, name="cbn"),
        config=dict(name="cbn", num_classes=3),
        inputs=[RGB, LABELS],
        output_shape=(8, 8, 3),
        apply=lambda layer, inputs: layer(inputs),
    ),
    SerializableCase(
        name="sn_embedding",
        make=lambda: SNEmbedding(3, 6, embeddings_initializer="ones", name="embed"),
        config=dict(
            name="embed",
            num_classes=3,
            output_dim=6,
            embeddings_initializer=dict(
                module="keras.initializers",
                class_name="Ones",
                config={},
                registered_name=None,
            ),
        ),
        inputs=[LABELS],
        output_shape=(6,),
    ),
    SerializableCase(
        name="resnet_generator",
        make=lambda: ResNetGenerator((8, 8, 1), 3, z_dim=5, base_channels=2, name="gen"),
        config=dict(
            name="gen", trainable=True, image_shape=(8, 8, 1), num_classes=3, z_dim=5,
            base_channels=2,
        ),
        inputs=[FEATURES, LABELS],
        output_shape=(8, 8, 1),
        apply=lambda layer, inputs: layer(inputs),
        base=keras.Model,
        zero_gradient=("block1_conv1/bias", "block1_shortcut_conv/bias"),  # BN follows both.
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_serializable(case, tmp_path):
    check_serializable(case, tmp_path)
