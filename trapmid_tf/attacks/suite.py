"""The attack suite by name: the priors each attack needs, how to train them, the inversions.

    priors = {"gmi": train_gmi_prior(public, generator_steps=2000)}
    attack = build_attack("gmi", priors)
    result = attack.invert(target, classes=range(5), per_class=5)

Attacks: `gmi`, `kedmi`, `lomma_gmi`, `lomma_kedmi` (LOMMA's logit loss, feature
regulariser and distilled surrogates on the GMI / KED-MI priors), `plgmi`, the prior-free
`mi_face`, and the attacks that take keyword options in `build_attack` (`OPTION_ATTACKS`):
the `lookup` baseline (no prior, no optimisation: the public images the target is surest
of), `plgmi_adaptive` / `plgmi_adaptive_estimated` (PLG-MI++ with the defender's / its own
estimated trapdoor signatures), `trigger_recovery` (Neural-Cleanse-style blend patterns on public
images), the label-only `brep_mi` (on the GMI prior) and the `transfer_null` (targeted
adversarial examples of the target from public images: what a judge makes of the target's
adversarial features). Priors: `gmi` (independent of the
target: the pipeline trains one per training seed, shared by that seed's targets), and per
target `kedmi`, `plgmi` and `lomma` (surrogates plus the target's mean public feature).

Budgets are optimiser steps, as the reference counts them where it can: generator steps of
the GAN priors (each preceded by `n_critic` opponent steps), distillation steps of LOMMA's
surrogates, inversion iterations. `REFERENCE_BUDGETS` holds the reference's values.
"""

import collections
import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from trapmid_tf.attacks.brep_mi import BREPMIAttack
from trapmid_tf.attacks.gmi import GMIAttack
from trapmid_tf.attacks.kedmi import REFERENCE_BATCH_SIZE, KEDMIAttack
from trapmid_tf.attacks.lomma import LOMMAAttack, SurrogateDistiller, compute_p_reg
from trapmid_tf.attacks.lookup import LookupAttack
from trapmid_tf.attacks.mi_face import MIFaceAttack
from trapmid_tf.attacks.plgmi import PLGMIAttack
from trapmid_tf.attacks.plgmi_adaptive import PLGMIAdaptiveAttack
from trapmid_tf.attacks.plgmi_prior import PLGMIPrior, select_top_n
from trapmid_tf.attacks.priors import GMIPrior, KEDMIPrior, kedmi_batches
from trapmid_tf.attacks.transfer_null import TransferNullAttack
from trapmid_tf.attacks.trigger_recovery import TriggerRecoveryAttack
from trapmid_tf.files import atomic_path, write_json
from trapmid_tf.models.cgan import resnet_generator, sn_projection_discriminator
from trapmid_tf.models.gan import dcgan_generator, minibatch_discriminator, wgan_critic
from trapmid_tf.models.small_cnn import small_cnn
from trapmid_tf.seeding import seeded
from trapmid_tf.validation import check_positive_int

# The zero-effort lookup baseline, the floor every other attack must beat to show leakage.
LOOKUP = "lookup"
# The transfer null: does a judge accept the target's adversarial examples of a class?
TRANSFER_NULL = "transfer_null"
# Attacks that take keyword options in `build_attack` (what the attacker knows, its settings).
OPTION_ATTACKS = (
    LOOKUP, "plgmi_adaptive", "plgmi_adaptive_estimated", "trigger_recovery", "brep_mi",
    TRANSFER_NULL,
)
ATTACKS = ("gmi", "kedmi", "lomma_gmi", "lomma_kedmi", "plgmi", "mi_face", *OPTION_ATTACKS)
PRIORS_OF_ATTACK = {
    "gmi": ("gmi",),
    "kedmi": ("kedmi",),
    "lomma_gmi": ("gmi", "lomma"),
    "lomma_kedmi": ("kedmi", "lomma"),
    "plgmi": ("plgmi",),
    "mi_face": (),
    LOOKUP: (),
    "plgmi_adaptive": ("plgmi",),
    "plgmi_adaptive_estimated": ("plgmi",),
    "trigger_recovery": (),
    "brep_mi": ("gmi",),
    TRANSFER_NULL: (),
}
# Priors that depend on the attacked model (trained again for every target).
TARGET_PRIORS = ("kedmi", "plgmi", "lomma")
P_REG_FILE = "p_reg.npy"
STEPS_FILE = "steps.json"

# The reference's budgets in optimiser steps (CelebA, its main protocol; spec section 3):
# GMI and KED-MI priors: 120 epochs of the 30,000-image public set at batch 64 with the last
# short batch dropped (468 batches), a generator step every 5th discriminator step
# (plgmi/baselines/GMI.py, KED_MI.py, config/celeba.json); PLG-MI: 30,000 generator iterations
# of 5 discriminator steps (plgmi/train_cgan.py --max_iteration, --n_dis); LOMMA surrogates:
# the "_20" checkpoint the attack loads is saved after 19 epochs of 468 batches
# (lomma/engine.py::train_augmodel); inversions: recovery.py 1500, reconstruct.py 600.
REFERENCE_BUDGETS = dict(
    gmi_generator_steps=120 * 468 // 5,
    kedmi_generator_steps=120 * 468 // 5,
    plgmi_generator_steps=30_000,
    surrogate_steps=19 * 468,
    n_critic=5,
    plgmi_n_dis=5,
    batch_size=64,
    top_n=30,
    iterations=1500,
    plgmi_iterations=600,
)

PriorNetworks = collections.namedtuple("PriorNetworks", ["generator", "discriminator"])
PriorNetworks.__doc__ = """A GAN prior's two networks, as `build_attack` uses them."""
LOMMAModels = collections.namedtuple(
    "LOMMAModels", ["surrogates", "p_reg", "steps"], defaults=[None]
)
LOMMAModels.__doc__ = """LOMMA's distilled surrogate classifiers, the target's mean public
feature, and the distillation steps (`training_steps`; None when unknown)."""


@dataclasses.dataclass(frozen=True)
class InversionSettings:
    """Optimisation budget of the inversions; None keeps each attack's reference default.

    Attributes:
        iterations: Steps of the latent-space attacks (reference: GMI, KED-MI, LOMMA 1500;
            PLG-MI 600).
        plgmi_iterations: Steps of PLG-MI.
        mi_face_iterations: Steps of the pixel-space MI-Face attack (our default 1000).
        kedmi_batch_size: The batch size KED-MI's discriminator was trained with; its
            minibatch features see inversion batches of that size.
    """

    iterations: int | None = None
    plgmi_iterations: int | None = None
    mi_face_iterations: int | None = None
    kedmi_batch_size: int = REFERENCE_BATCH_SIZE


def priors_needed(attacks):
    """Returns the sorted prior names the given attacks need.

    Args:
        attacks: Attack names among `ATTACKS`.

    Returns:
        A sorted list of prior names ("gmi", "kedmi", "lomma", "plgmi").

    Raises:
        ValueError: For an unknown attack name.
    """
    needed = set()
    for attack in attacks:
        if attack not in PRIORS_OF_ATTACK:
            raise ValueError(f"attacks must be among {list(ATTACKS)}; received {attack!r}.")
        needed.update(PRIORS_OF_ATTACK[attack])
    return sorted(needed)


def _shuffled_batches(dataset, batch_size, seed):
    """Endless batches, reshuffled every pass, the last short batch of a pass dropped."""
    size = int(dataset.cardinality())
    batches = dataset.cache().shuffle(size, seed=seed).batch(batch_size, drop_remainder=True)
    return batches.repeat()


def _fit_steps(model, batches, steps, verbose):
    """Runs exactly `steps` training steps of `model` on the endless dataset `batches`."""
    check_positive_int("steps", steps)
    # shuffle=False: the dataset orders itself (Keras ignores, and warns about, True).
    model.fit(batches, epochs=1, steps_per_epoch=int(steps), shuffle=False, verbose=verbose)


def train_gmi_prior(
    public, generator_steps, batch_size=64, base_channels=64, n_critic=5, seed=0, verbose=2
):
    """Trains GMI's WGAN-GP prior (DCGAN generator, critic) on public images.

    Args:
        public: Unbatched dataset of public images (float32 HxWxC in [0, 1]).
        generator_steps: Generator steps; the critic takes `n_critic` steps before each
            (reference 11,232).
        batch_size: Batch size (reference 64).
        base_channels: Width of both networks (reference 64; less is enough for digits).
        n_critic: Opponent steps per generator step (reference 5).
        seed: Seed of the networks, latents and shuffling.
        verbose: `fit` verbosity.

    Returns:
        The trained `GMIPrior`.
    """
    with seeded(seed):
        image_shape = tuple(public.element_spec.shape)
        prior = GMIPrior(
            dcgan_generator(image_shape, base_channels=base_channels),
            wgan_critic(image_shape, base_channels=base_channels),
            n_critic=n_critic,
            seed=seed,
        )
        prior.compile()
        batches = _shuffled_batches(public, batch_size, seed)
        _fit_steps(prior, batches, generator_steps * n_critic, verbose)
    return prior


def train_kedmi_prior(
    public, target, generator_steps, batch_size=64, base_channels=64, n_critic=5, seed=0,
    verbose=2,
):
    """Trains KED-MI's semi-supervised GAN against `target` on public images.

    Args:
        public: Unbatched dataset of public images.
        target: The attacked classifier (logits); never updated.
        generator_steps: Generator steps; the discriminator takes `n_critic` steps before
            each (reference 11,232).
        batch_size: Batch size (reference 64).
        base_channels: Width of both networks (reference 64; less is enough for digits).
        n_critic: Opponent steps per generator step (reference 5).
        seed: Seed of the networks, latents and shuffling.
        verbose: `fit` verbosity.

    Returns:
        The trained `KEDMIPrior`.
    """
    with seeded(seed):
        image_shape = tuple(public.element_spec.shape)
        num_classes = int(target.output_shape[-1])
        prior = KEDMIPrior(
            dcgan_generator(image_shape, base_channels=base_channels),
            minibatch_discriminator(image_shape, num_classes, base_channels=base_channels),
            target,
            n_critic=n_critic,
            seed=seed,
        )
        prior.compile()
        batches = kedmi_batches(public.cache(), batch_size, seed=seed).repeat()
        _fit_steps(prior, batches, generator_steps * n_critic, verbose)
    return prior


def train_plgmi_prior(
    public_images, target, generator_steps, top_n=30, batch_size=64, base_channels=64,
    n_dis=5, seed=0, verbose=2, signatures=None, signature_weight=0.0,
):
    """Trains PLG-MI's conditional GAN on the target's top-n pseudo-labelled public images.

    With `signatures` it is PLG-MI++'s prior at full strength: the top-n ranking and the
    generator loss both subtract / add the trapdoor-signature penalty (`PLGMIPrior`).

    Args:
        public_images: Float32 array of public images `(n, H, W, C)` in [0, 1].
        target: The attacked classifier (logits); never updated.
        generator_steps: Generator iterations, each followed by `n_dis` discriminator steps
            (reference 30,000).
        top_n: Public images selected per class (reference 30).
        batch_size: Batch size (reference 64).
        base_channels: Width of both networks (reference 64).
        n_dis: Discriminator steps per generator step (reference 5).
        seed: Seed of the networks, latents, augmentation and shuffling.
        verbose: `fit` verbosity.
        signatures: `(classes, feature_dims)` trapdoor signatures of the target, or None for
            plain PLG-MI.
        signature_weight: Weight of the signature penalty (PLG-MI++'s `penalty_weight`).

    Returns:
        The trained `PLGMIPrior`.
    """
    with seeded(seed):
        num_classes = int(target.output_shape[-1])
        images, labels = select_top_n(
            target, public_images, num_classes, n=top_n, signatures=signatures,
            signature_weight=signature_weight,
        )
        image_shape = tuple(images.shape[1:])
        prior = PLGMIPrior(
            resnet_generator(image_shape, num_classes, base_channels=base_channels),
            sn_projection_discriminator(image_shape, num_classes, base_channels=base_channels),
            target,
            n_dis=n_dis,
            seed=seed,
            signatures=signatures,
            signature_weight=signature_weight,
        )
        prior.compile()
        # The reference's endless sampler: a fresh permutation every pass, batches across passes.
        batches = (
            tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(batch_size)
        )
        _fit_steps(prior, batches, generator_steps * n_dis, verbose)
    return prior


def default_surrogates(input_shape, num_classes):
    """Three small CNNs of different widths: LOMMA's augmented models for small images.

    The reference distils EfficientNet-B0/B1/B2 for 64x64 faces; any architecture the
    attacker picks works, and three widths of our CNN suit 32x32 digits.

    Args:
        input_shape: `(height, width, channels)` of the images.
        num_classes: The target's number of classes.

    Returns:
        A list of three untrained classifiers.
    """
    return [
        small_cnn(input_shape, num_classes, width=width, name=f"surrogate_{width}")
        for width in (16, 24, 48)
    ]


def train_lomma_surrogates(
    public, target, steps, students=None, batch_size=64, seed=0, verbose=2
):
    """Distils LOMMA's surrogate models from `target` on public images, and computes p_reg.

    Args:
        public: Unbatched dataset of public images.
        target: The attacked classifier (logits); never updated.
        steps: Distillation steps of each surrogate (reference 8,892: 19 epochs of 468
            batches).
        students: Untrained classifiers with the target's classes; None for
            `default_surrogates`.
        batch_size: Batch size (reference 64).
        seed: Seed of the students and shuffling.
        verbose: `fit` verbosity.

    Returns:
        `LOMMAModels`: the distilled classifiers, the target's mean public feature, and the
        steps each surrogate took.
    """
    with seeded(seed):
        image_shape = tuple(public.element_spec.shape)
        num_classes = int(target.output_shape[-1])
        students = students or default_surrogates(image_shape, num_classes)
        batches = _shuffled_batches(public, batch_size, seed)
        surrogates, steps_run = [], []
        for student in students:
            distiller = SurrogateDistiller(student, target)
            distiller.compile()
            _fit_steps(distiller, batches, steps, verbose)
            surrogates.append(distiller.student)
            steps_run.append(int(distiller.optimizer.iterations))
        p_reg = np.asarray(compute_p_reg(target, public))
    return LOMMAModels(surrogates, p_reg, {"distillation_steps": steps_run})


def training_steps(prior):
    """The optimiser steps a freshly trained prior took, read off its optimisers.

    Args:
        prior: What a `train_*` function of this module returned.

    Returns:
        Dict: `generator_steps` and `opponent_steps` for a GAN prior, `distillation_steps`
        (one count per surrogate) for LOMMA; None for networks read back from files.
    """
    if isinstance(prior, PriorNetworks):
        return None
    if isinstance(prior, LOMMAModels):
        return None if prior.steps is None else dict(prior.steps)
    return dict(
        generator_steps=int(prior.generator_optimizer.iterations),
        opponent_steps=int(prior.optimizer.iterations),
    )


def save_prior(name, prior, directory):
    """Writes a trained prior's networks into `directory` (atomically, file by file).

    Args:
        name: "gmi", "kedmi" or "plgmi" (a prior model or `PriorNetworks`: writes
            `generator.keras`, `discriminator.keras`), or "lomma" (`LOMMAModels`: writes
            `surrogate_<i>.keras` and `p_reg.npy`). A prior just trained also gets
            `steps.json` (`training_steps`).
        prior: What the matching `train_*` function returned.
        directory: Destination folder.
    """
    if name == "lomma":
        files = {f"surrogate_{i}.keras": model for i, model in enumerate(prior.surrogates)}
        with atomic_path(os.path.join(directory, P_REG_FILE)) as temporary:
            np.save(temporary, prior.p_reg)
    else:
        files = {"generator.keras": prior.generator, "discriminator.keras": _opponent(prior)}
    for file_name, model in files.items():
        with atomic_path(os.path.join(directory, file_name)) as temporary:
            model.save(temporary)
    steps = training_steps(prior)
    if steps is not None:
        write_json(os.path.join(directory, STEPS_FILE), steps)


def load_training_steps(directory):
    """The `steps.json` that `save_prior` wrote into `directory`, or None if there is none."""
    path = os.path.join(directory, STEPS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def load_prior(name, directory):
    """Reads what `save_prior(name, ...)` wrote.

    Args:
        name: "gmi", "kedmi", "plgmi" or "lomma".
        directory: The folder `save_prior` wrote.

    Returns:
        `PriorNetworks`, or `LOMMAModels` for "lomma".

    Raises:
        FileNotFoundError: If a file is missing (its path is named).
    """
    def load(file_name):
        path = os.path.join(directory, file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"prior {name!r}: missing file {path!r}.")
        return keras.models.load_model(path) if path.endswith(".keras") else np.load(path)

    if name == "lomma":
        count = len([f for f in os.listdir(directory) if f.startswith("surrogate_")])
        surrogates = [load(f"surrogate_{i}.keras") for i in range(count)]
        return LOMMAModels(surrogates, load(P_REG_FILE), load_training_steps(directory))
    return PriorNetworks(load("generator.keras"), load("discriminator.keras"))


def _opponent(prior):
    """The critic of a `GMIPrior`, else the `discriminator` of the prior."""
    return prior.critic if isinstance(prior, GMIPrior) else prior.discriminator


def build_attack(name, priors, settings=InversionSettings(), **options):
    """Builds the inversion called `name` from trained priors.

    Args:
        name: One of `ATTACKS`.
        priors: Dict with the priors the attack needs (`PRIORS_OF_ATTACK[name]`):
            "gmi", "kedmi", "plgmi" the trained prior model or its `PriorNetworks`, "lomma"
            `LOMMAModels`.
        settings: `InversionSettings` budget (PLG-MI++ runs `plgmi_iterations`).
        **options: Only for `OPTION_ATTACKS`: keyword arguments of the attack's class.
            `plgmi_adaptive` needs `signatures`, the defender's trapdoor signatures
            (`defender_signatures(target, triggers, alpha, images)`), and takes
            `penalty_weight`; `plgmi_adaptive_estimated` needs `public_images`, takes
            `penalty_weight` and `top_n`, and estimates the signatures from a first plain
            PLG-MI round and the public images (`estimate_signatures`); `lookup` needs
            `public_images`
            and takes `LookupAttack`'s `batch_size`; `trigger_recovery` needs
            `public_images` and takes `TriggerRecoveryAttack`'s `alpha`, `prior`,
            `prior_weight`, `iterations`, ...; `brep_mi` takes `BREPMIAttack`'s settings
            (e.g. `patience`, `max_iterations`) and sees only the target's labels;
            `transfer_null` needs `public_images` and takes `TransferNullAttack`'s
            `iterations` and `step_size`.

    Returns:
        An attack with `invert(target, classes, per_class, seed, verbose)`.

    Raises:
        ValueError: For an unknown name, a missing prior, or options the attack does not
            take or needs.

    Example:
        >>> target = small_cnn((32, 32, 1), 5)  # any classifier: images in [0, 1] -> logits
        >>> attack = build_attack("mi_face", {}, InversionSettings(mi_face_iterations=10))
        >>> result = attack.invert(target, classes=[0, 3], per_class=2, verbose=0)
        >>> result.images.shape, result.labels.tolist()
        ((4, 32, 32, 1), [0, 0, 3, 3])
        >>> gmi = build_attack("gmi", {"gmi": train_gmi_prior(public, 2000)})  # doctest: +SKIP
    """
    missing = [p for p in priors_needed([name]) if p not in priors]
    if missing:
        raise ValueError(f"attack {name!r} needs the priors {missing}; received {sorted(priors)}.")
    if options and name not in OPTION_ATTACKS:
        raise ValueError(f"attack {name!r} takes no options; received {sorted(options)}.")
    budget = {} if settings.iterations is None else {"iterations": settings.iterations}
    kedmi_budget = dict(budget, discriminator_batch_size=settings.kedmi_batch_size)
    if name == "gmi":
        return GMIAttack(priors["gmi"].generator, _opponent(priors["gmi"]), **budget)
    if name == "kedmi":
        return KEDMIAttack(
            priors["kedmi"].generator, _opponent(priors["kedmi"]), **kedmi_budget
        )
    if name in ("lomma_gmi", "lomma_kedmi"):
        base = name.split("_")[1]
        lomma = priors["lomma"]
        return LOMMAAttack(
            base, priors[base].generator, _opponent(priors[base]),
            surrogates=lomma.surrogates, p_reg=lomma.p_reg,
            **(kedmi_budget if base == "kedmi" else budget),
        )
    if name in ("plgmi", "plgmi_adaptive", "plgmi_adaptive_estimated"):
        iterations = settings.plgmi_iterations
        budget = {} if iterations is None else {"iterations": iterations}
        if name == "plgmi":
            return PLGMIAttack(priors["plgmi"].generator, **budget)
        return _plgmi_adaptive(name, priors["plgmi"].generator, budget, options)
    if name in (LOOKUP, "trigger_recovery", TRANSFER_NULL) and "public_images" not in options:
        raise ValueError(f"attack {name!r} needs the option `public_images`.")
    if name == LOOKUP:
        return LookupAttack(**options)
    if name == TRANSFER_NULL:
        return TransferNullAttack(**options)
    if name == "trigger_recovery":
        return TriggerRecoveryAttack(**options)
    if name == "brep_mi":
        return BREPMIAttack(priors["gmi"].generator, **options)
    iterations = settings.mi_face_iterations
    return MIFaceAttack(**({} if iterations is None else {"iterations": iterations}))


def _plgmi_adaptive(name, generator, budget, options):
    """PLG-MI++ at the knowledge level its name says (signatures given, or estimated)."""
    options = dict(options)
    signatures = options.pop("signatures", None)
    if name == "plgmi_adaptive" and signatures is None:
        raise ValueError(
            "attack 'plgmi_adaptive' needs the option `signatures` (the defender's trapdoor "
            "signatures, see `defender_signatures`); 'plgmi_adaptive_estimated' estimates them."
        )
    if name == "plgmi_adaptive_estimated" and signatures is not None:
        raise ValueError(
            "attack 'plgmi_adaptive_estimated' estimates the signatures itself; received the "
            "option `signatures` (use 'plgmi_adaptive')."
        )
    if name == "plgmi_adaptive_estimated" and "public_images" not in options:
        raise ValueError(
            "attack 'plgmi_adaptive_estimated' needs the option `public_images` (it estimates "
            "the signatures against the target's top-n public images)."
        )
    return PLGMIAdaptiveAttack(generator, signatures, **budget, **options)
