"""Classifier zoo (logit outputs) and the feature-extractor convention."""

from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.models.irse import facenet64, ir152
from trapmid_tf.models.resnet import ir18
from trapmid_tf.models.small_cnn import small_cnn
from trapmid_tf.models.vgg import vgg16_bn

__all__ = [
    "facenet64",
    "feature_extractor",
    "features_and_logits",
    "ir152",
    "ir18",
    "small_cnn",
    "vgg16_bn",
]
