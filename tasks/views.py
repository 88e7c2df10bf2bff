"""Augmented views for distillation, each packed with the teacher's logits on that very view.

Beyer et al. 2022 ("Knowledge distillation: A good teacher is patient and consistent"): the
student should match the teacher's *function*, so teacher and student must see the same
augmented pixels; logits computed once on clean inputs and reused under augmentation teach the
student outputs for images it never saw. Here the teacher runs inside the tf.data pipeline on the
batch the student will train on, so they are consistent by construction and the distillation loss
stays the plain packed-targets loss (tasks/teaching.py).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tasks.errors import InputError
from tasks.models import as_logits, output_activation
from tasks.splits import PREFETCH


def check_augment(augment: str, input_shape: tuple[int, ...]) -> None:
    """flip_crop needs images: (height, width, channels)."""
    if augment == "flip_crop" and len(input_shape) != 3:
        raise InputError(f"distill.augment: flip_crop flips and crops images (height, width, "
                         f"channels), but the samples have shape {input_shape}; use mixup or none")


def consistent_views(batches: tf.data.Dataset, teacher: keras.Model,
                     augment: str) -> tf.data.Dataset:
    """(view, label and the teacher's logits on the view) for every (inputs, labels) batch.

    Sequential map: TensorFlow's random ops are repeatable from the run's seed only in order."""
    view = {"flip_crop": flip_crop, "mixup": mixup}[augment]
    activation = output_activation(teacher)

    def pack(x: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = view(x)
        logits = as_logits(teacher(x, training=False), activation)
        labels = tf.reshape(tf.cast(labels, tf.float32), [tf.shape(x)[0], -1])
        return x, tf.concat([labels, logits], axis=1)

    return batches.map(pack).prefetch(PREFETCH)


def flip_crop(x: tf.Tensor) -> tf.Tensor:
    """Each image flipped left-right at random and shifted by up to 1/8 of its size (reflected
    padding, then a random crop back to size): the standard CIFAR augmentation."""
    x = tf.image.random_flip_left_right(x)
    height, width = x.shape[1], x.shape[2]
    pad_h, pad_w = max(1, height // 8), max(1, width // 8)
    padded = tf.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
    return tf.map_fn(lambda image: tf.image.random_crop(image, x.shape[1:]), padded)


def mixup(x: tf.Tensor) -> tf.Tensor:
    """Each sample mixed with another of the batch, at least half itself (its label stays
    right for the hard-label loss; the teacher's logits are on the mix)."""
    count = tf.shape(x)[0]
    share = 0.5 + 0.5 * tf.random.uniform([count], dtype=x.dtype)
    share = tf.reshape(share, [-1] + [1] * (len(x.shape) - 1))
    return share * x + (1 - share) * tf.gather(x, tf.random.shuffle(tf.range(count)))
