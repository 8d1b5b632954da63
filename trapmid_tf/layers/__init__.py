"""Reusable Keras layers: the trigger bank and the trapdoor augmentation."""

from trapmid_tf.layers.augment import TrapdoorAugment
from trapmid_tf.layers.triggers import BlendTrigger

__all__ = ["BlendTrigger", "TrapdoorAugment"]
