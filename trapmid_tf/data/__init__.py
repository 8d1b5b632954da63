"""Datasets: the embedded digits default, MNIST-family IDX files, CelebA, FFHQ, FaceScrub, folders."""

from trapmid_tf.data.images import random_horizontal_flip
from trapmid_tf.data.loaders import DatasetSplits, default_data_dir, load, load_evaluation_data
from trapmid_tf.data.trapdoor_labels import with_trapdoor_labels

__all__ = [
    "DatasetSplits",
    "default_data_dir",
    "load",
    "load_evaluation_data",
    "random_horizontal_flip",
    "with_trapdoor_labels",
]
