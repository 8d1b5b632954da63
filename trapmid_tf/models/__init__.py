"""Classifier zoo (logit outputs), the feature-extractor convention, and GAN networks."""

from trapmid_tf.models.cgan import (
    ConditionalBatchNorm,
    ResNetGenerator,
    SNEmbedding,
    resnet_generator,
    sn_projection_discriminator,
)
from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.models.gan import (
    MinibatchDiscrimination,
    dcgan_generator,
    minibatch_discriminator,
    wgan_critic,
)
from trapmid_tf.models.irse import facenet64, ir152
from trapmid_tf.models.resnet import ir18
from trapmid_tf.models.small_cnn import small_cnn
from trapmid_tf.models.vgg import vgg16_bn

__all__ = [
    "ConditionalBatchNorm",
    "MinibatchDiscrimination",
    "ResNetGenerator",
    "SNEmbedding",
    "dcgan_generator",
    "minibatch_discriminator",
    "resnet_generator",
    "sn_projection_discriminator",
    "wgan_critic",
    "facenet64",
    "feature_extractor",
    "features_and_logits",
    "ir152",
    "ir18",
    "small_cnn",
    "vgg16_bn",
]
