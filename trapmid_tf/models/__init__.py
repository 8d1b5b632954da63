"""Classifier zoo (logit outputs), the feature-extractor convention, and GAN networks.

PyTorch checkpoints of the reference's architectures load with `load_torch_weights`.
Zoo convolutions are `FastGradConv2D` and zoo batch norms `FusedBatchNorm` (layers of
`trapmid_tf.layers`, also exported here);
`plain_keras_copy` makes a deployable copy of standard Keras layers and `load_classifier` /
`fast_gradient_copy` the reverse, for attacks.
"""

from trapmid_tf.models.cgan import (
    ConditionalBatchNorm,
    ResNetGenerator,
    SNEmbedding,
    resnet_generator,
    sn_projection_discriminator,
)
from trapmid_tf.layers.fast_grad_conv import FastGradConv2D
from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm
from trapmid_tf.models.copies import fast_gradient_copy, load_classifier, plain_keras_copy
from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.models.gan import (
    MinibatchDiscrimination,
    dcgan_generator,
    minibatch_discriminator,
    wgan_critic,
)
from trapmid_tf.models.irse import BilinearResize, facenet64, facenet_eval, ir152
from trapmid_tf.models.resnet import ir18
from trapmid_tf.models.small_cnn import small_cnn
from trapmid_tf.models.torch_weights import load_torch_weights
from trapmid_tf.models.vgg import vgg16_bn

__all__ = [
    "BilinearResize",
    "ConditionalBatchNorm",
    "FastGradConv2D",
    "FusedBatchNorm",
    "MinibatchDiscrimination",
    "ResNetGenerator",
    "SNEmbedding",
    "dcgan_generator",
    "fast_gradient_copy",
    "load_classifier",
    "minibatch_discriminator",
    "plain_keras_copy",
    "resnet_generator",
    "sn_projection_discriminator",
    "wgan_critic",
    "facenet64",
    "facenet_eval",
    "feature_extractor",
    "features_and_logits",
    "ir152",
    "ir18",
    "load_torch_weights",
    "small_cnn",
    "vgg16_bn",
]
