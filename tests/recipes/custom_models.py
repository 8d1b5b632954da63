"""Classifier builders of one's own, for `trapmid-train --model=tests.recipes.custom_models:...`."""

import keras


def tiny_classifier(input_shape, num_classes):
    """A functional CNN whose last layer is the logits Dense (serves every defense)."""
    images = keras.Input(input_shape)
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(images)
    hidden = keras.layers.Flatten()(hidden)
    feature = keras.layers.Dense(8, activation="relu", name="feature")(hidden)
    return keras.Model(images, keras.layers.Dense(num_classes)(feature), name="tiny")


def pooled_classifier(input_shape, num_classes):
    """Logits from a pooling layer, no Dense: a classifier MID and BiDO cannot use."""
    images = keras.Input(input_shape)
    logits = keras.layers.Conv2D(num_classes, 3, padding="same")(images)
    return keras.Model(images, keras.layers.GlobalAveragePooling2D()(logits))


def wrong_classes(input_shape, num_classes):
    """One logit too many."""
    return tiny_classifier(input_shape, num_classes + 1)


def compiled_classifier(input_shape, num_classes):
    """Compiled already."""
    model = tiny_classifier(input_shape, num_classes)
    model.compile(optimizer="adam", loss="mse")
    return model


def not_a_model(input_shape, num_classes):
    """Returns a layer."""
    del input_shape, num_classes
    return keras.layers.Dense(3)


NOT_CALLABLE = 3
