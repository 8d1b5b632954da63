"""Saving support shared by our Keras models."""


class SeedStateMixin:
    """Saves and restores every random-seed state of a Keras model and its sub-layers.

    Keras does not save `keras.random.SeedGenerator` states, so a reloaded model would draw
    different random numbers (augmentation, latents, label sampling, dropout) than the one
    that kept training. Mix this in before `keras.Model` to make `model.save` +
    `keras.models.load_model` continue the same random streams. The model itself must hold
    no variables of its own (its sub-layers and optimisers are saved by Keras as usual).
    """

    def _all_seed_generators(self):
        """Every seed generator of the model and its sub-layers, in a fixed order."""
        return [sg for layer in self._flatten_layers() for sg in layer._seed_generators]

    def save_own_variables(self, store):
        for index, generator in enumerate(self._all_seed_generators()):
            store[f"seed_{index}"] = generator.state.numpy()

    def load_own_variables(self, store):
        generators = self._all_seed_generators()
        if len(store.keys()) != len(generators):
            raise ValueError(
                f"Saved {type(self).__name__} holds {len(store.keys())} seed states; this "
                f"model has {len(generators)} seed generators."
            )
        for index, generator in enumerate(generators):
            generator.state.assign(store[f"seed_{index}"])
