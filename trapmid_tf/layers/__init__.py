"""Reusable Keras layers: trigger bank, trapdoor augmentation, the zoo's fast conv, batch norm."""

from trapmid_tf.layers.augment import TrapdoorAugment
from trapmid_tf.layers.fast_grad_conv import FastGradConv2D
from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm
from trapmid_tf.layers.triggers import BlendTrigger

__all__ = ["BlendTrigger", "FastGradConv2D", "FusedBatchNorm", "TrapdoorAugment"]
