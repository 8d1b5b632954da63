"""Attack side, numerically: ours against the Trap-MID reference's own PyTorch code in float64.

PyTorch and the reference are not dependencies of trapmid_tf. Give a Python that has torch,
scipy and absl-py, and a checkout of the reference, e.g.

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch scipy absl-py
    .venv/bin/python recipes/compare_reference.py --reference_python=/work/torchenv/bin/python \
        --reference_repo=/path/to/Trap-MID --out=runs/compare_reference

Rows (small random networks, built on both sides from the same NumPy arrays; every random draw
of an algorithm is made here and injected on both sides, never left to two generators):

* knn: plgmi/evaluation.py `calc_knn`, run as written on features saved as its .npy files,
  against `trapmid_tf.metrics.knn_distance`;
* fid: plgmi/metrics/fid.py `calculate_frechet_distance`, run as written on the mean and
  covariance of `calculate_activation_statistics` (fid.py:132-133), against
  `trapmid_tf.metrics.frechet_distance`, from the same feature arrays;
* topn: the priority-queue loop of plgmi/top_n_selection.py `top_n_selection` on the softmax
  of the target's logits, against `plgmi_prior.most_confident` (the difference of this row is
  the fraction of selected indices that differ);
* gmi: the loop body of plgmi/baselines/recovery.py `inversion` (one reference run per
  restart) against `GMIAttack`;
* kedmi: the loop body of plgmi/baselines/recovery.py `dist_inversion`, with the reference's
  `reparameterize` run as written on the injected eps, against `KEDMIAttack`;
* lomma: the loop body of lomma/attack.py `inversion` (GMI base) with its `iden_loss` run as
  written (target + one surrogate, logit loss, p_reg regulariser), against `LOMMAAttack`;
* gmi_prior: the training loop body of plgmi/baselines/GMI.py (WGAN-GP, a generator step
  every 5th critic step) with its `gradient_penalty` run as written, against `GMIPrior.fit`;
  the compared values are the changes of both networks' weights over the steps;
* kedmi_prior: the training loop body of plgmi/baselines/KED_MI.py (semi-supervised GAN:
  soft labels from the target, unlabelled loss, feature matching + entropy) against
  `KEDMIPrior.fit`, compared as gmi_prior;
* plgmi: the loop body of plgmi/reconstruct.py `inversion` (margin loss, Adam) with a small
  conditional generator, against `PLGMIAttack`;
* plgmi_prior: the iteration of plgmi/train_cgan.py (a generator step with the margin loss,
  then hinge-loss steps of a projection discriminator), against `PLGMIPrior.fit`, compared
  as gmi_prior; PLG-MI's kornia augmentations are a fixed flip on both sides in both rows;
* trapmid_vgg16, trapmid_ir18, trapmid_negls, negls, bido: the training loop body of
  engine.py `train` (Trap-MID's discriminator, trigger and classifier steps; NegLS; BiDO's
  HSIC loss) on the reference's `VGG16` / `IR18` (`IR18_BiDO`) with torchvision's random
  initialisation, against `TrapMIDModel` (or the classifier's own step, `BiDOModel`) on the
  zoo's `vgg16_bn` / `ir18` with PyTorch's BatchNorm rule, from the same weights
  (`assign_torch_state_dict`); the augmentation is a fixed flip on both sides. The compared
  values are the probes' logits (and the discriminator's, and the triggers) after every step
  and the change of every classifier variable.

The reference's loops are tangled with `.cuda()`, image files and the evaluation model, so the
worker runs copies of their bodies (file:line in each function) with the `.float()` casts
dropped: the reference computes in the dtype of its tensors apart from those casts, which
would make it float32. Our side runs the library: the attacks' `build_problem` and
`inversion.minimize` (one step per call, so that each step's injected draws are traced anew),
and `GMIPrior.fit` run eagerly. The compared values are the latents after every step (the
prior's weight changes; the metric values); the difference of a row is the largest over its
arrays of `max |ours - reference| / max |reference|`.

Our attacks cast losses to float32 (mixed-precision safety), which bounds the agreement at
float32's epsilon; each attack row is therefore also run with those casts lifted (a float64
tensor is left float64), the identity-batch weights unrounded and Keras's optimiser
hyperparameters given as float64 scalars, patched here and nowhere else, which isolates what
the algorithms themselves do. The rows that use Adam (ours is `tm.TorchAdam`, PyTorch's rule)
run once more with both sides' epsilon at 0 (or 1e-30, `EPSILON_ZERO`). The JSON
(`results.json`, with `flags.json`) and the printed Markdown table give every column; the
exchanged .npz files stay in --out.
"""

import contextlib
import functools
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
WORKER_FLAG = "--reference_worker"
TRAINING_ROWS = ("trapmid_vgg16", "trapmid_ir18", "trapmid_negls", "negls", "bido")
TRAINING_STEPS = 3  # default steps of the training rows
ROWS = ("knn", "fid", "topn", "gmi", "kedmi", "lomma", "gmi_prior", "kedmi_prior", "plgmi",
        "plgmi_prior", *TRAINING_ROWS)
PRIOR_ROWS = ("gmi_prior", "kedmi_prior", "plgmi_prior")
ATTACK_ROWS = ("gmi", "kedmi", "lomma", *PRIOR_ROWS, "plgmi")
ADAM_ROWS = ("kedmi", *PRIOR_ROWS, "plgmi", "trapmid_negls")
if __name__ == "__main__" and WORKER_FLAG not in sys.argv:
    flags.DEFINE_list("rows", list(ROWS), "Rows to compare.")
    flags.DEFINE_string("reference_python", None, "A Python interpreter with torch.")
    flags.DEFINE_string("reference_repo", None, "A checkout of the Trap-MID reference.")
    flags.DEFINE_integer("steps", 5, "Optimisation steps per attack row.")
    flags.DEFINE_integer("prior_steps", 10,
                         "Discriminator steps of the prior rows (a generator step every 5th).")
    flags.DEFINE_integer("training_steps", TRAINING_STEPS,
                         "Steps of the training rows (Trap-MID and the defenses).")
    flags.DEFINE_integer("seed", 0, "Seed of the networks, inputs and draws.")
    flags.DEFINE_string("out", None, "Folder for the exchanged .npz files and results.json.")

# Network sizes: z_dim, image side, generator channels, conv channels, feature size, classes.
Z_DIM, SIDE, GEN_CHANNELS, CHANNELS, HIDDEN, CLASSES = 5, 6, 2, 4, 8, 4
IDENTITIES, RESTARTS = 3, 2  # 3 identities: batch weights 1/3 are not exact in float32
LEARNING_RATE, MOMENTUM, IDENTITY_WEIGHT, LOMMA_REG = 0.02, 0.9, 100.0, 1.0
# GMI prior (plgmi/baselines/config/celeba.json: lr 2e-4, n_critic 5; GMI.py: betas, penalty 10).
PRIOR_BATCH, PRIOR_LR, PRIOR_BETAS, N_CRITIC, PENALTY_WEIGHT = 4, 2e-4, (0.5, 0.999), 5, 10.0
ENTROPY_WEIGHT = 1e-4  # KED_MI.py:193
PLGMI_LR = 0.1  # plgmi/README.md's reconstruct.py command (--lr 0.1)
# PLG-MI's conditional GAN (train_cgan.py defaults: Adam 2e-4, betas (0.0, 0.9), alpha 0.2)
CGAN_BETAS, CGAN_ALPHA = (0.0, 0.9), 0.2
# The training rows (engine.py `train`): the reference config each follows, the network (as
# the config's `model_name`), image side, classes, batch, trigger channels (0: no trapdoor),
# NegLS as (epoch, epochs, schedule) with the smoothing at its full -0.05 (None: plain CE),
# and Adam (the NegLS CelebA config) or SGD. Smaller than the configs so that a float64 step
# takes seconds; the NegLS rows' step does not depend on the architecture (IR-18 for both).
TRAINING = {
    "trapmid_vgg16": dict(config="celeba/classify_trap.json", network="vgg16_bn", side=64,
                          classes=4, batch=2, trigger_channels=3, negls=None, adam=False),
    "trapmid_ir18": dict(config="mnist/classify_trap.json", network="ir18", side=32,
                         classes=5, batch=4, trigger_channels=1, negls=None, adam=False),
    "trapmid_negls": dict(config="celeba/classify_trap_negls.json", network="ir18", side=32,
                          classes=5, batch=4, trigger_channels=3,
                          negls=(80, 100, "ls_scheduler"), adam=True),
    "negls": dict(config="mnist/classify_negls.json", network="ir18", side=32, classes=5,
                  batch=4, trigger_channels=0, negls=(8, 10, "mnist_ls_scheduler"),
                  adam=False),
    # No config has a `bido` block (engine.py:70-77 reads one): loss.py's BiDOLoss defaults
    # (HSIC, linear label kernel, 0.05, 0.5, sigma 5) on the MNIST SGD settings, IR18_BiDO.
    "bido": dict(config="mnist/classify.json", network="ir18", side=32, classes=5, batch=4,
                 trigger_channels=0, negls=None, adam=False, bido=True),
}
PROBES = 4  # probe images, scored after every step of a training row
TRAPDOOR_SETTINGS = dict(alpha=0.02, beta=0.2, step_size=1e-2)  # config/*/classify_trap*.json
TRAINING_SGD = dict(lr=1e-2, momentum=0.9, weight_decay=1e-4)
TRAINING_ADAM_LR, NEGLS = 1e-3, -0.05
# "Adam epsilon 0" of the training rows and the PLG-MI prior: they have parameters whose
# gradient is exactly 0 (ReLUs dead over a small batch, embedding rows of unsampled classes),
# where epsilon 0 gives 0 / 0 on both sides; at 1e-30 where each Adam adds it no longer
# matters (the second moments are far above 1e-60).
TRAINING_EPSILON_ZERO = 1e-30
EPSILON_ZERO = {"plgmi_prior": TRAINING_EPSILON_ZERO}
ROUNDING_CHANGE = 1e-10  # weight changes below this fraction of the largest are not compared


def _sibling(name):
    """Imports the recipe `name` of this folder (recipes are not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_speed = _sibling("compare_reference_speed")  # its subprocess and reference loaders


# === Shared: inputs, exchange, comparison (NumPy only) ===


def relative_difference(ours, reference):
    """`max |ours - reference| / max |reference|`, the scale taken over the whole array.

    Integer arrays (indices) compare by the fraction of entries that differ. An all-zero
    reference (the WGAN critic's output bias never moves) gives 0 if ours is all zero too,
    else infinity.

    Args:
        ours, reference: Arrays (or scalars) of the same shape.

    Raises:
        ValueError: If the shapes differ.
    """
    ours, reference = np.asarray(ours), np.asarray(reference)
    if ours.shape != reference.shape:
        raise ValueError(
            f"`ours` must have the reference's shape {reference.shape}; received {ours.shape}."
        )
    if np.issubdtype(ours.dtype, np.integer) and np.issubdtype(reference.dtype, np.integer):
        return float(np.mean(ours != reference))
    ours, reference = ours.astype(np.float64), reference.astype(np.float64)
    scale = np.max(np.abs(reference))
    if scale == 0:
        return 0.0 if not np.any(ours) else float("inf")
    return float(np.max(np.abs(ours - reference)) / scale)


def largest_difference(ours, reference):
    """The largest `relative_difference` over the arrays of two dicts with the same keys.

    Raises:
        ValueError: If the keys differ, or as `relative_difference`.
    """
    if set(ours) != set(reference):
        raise ValueError(
            f"`ours` must hold the reference's arrays {sorted(reference)}; received "
            f"{sorted(ours)}."
        )
    return max(relative_difference(ours[key], reference[key]) for key in reference)


def save_arrays(path, arrays):
    """Writes a dict of arrays to an .npz file (no pickled objects)."""
    np.savez(path, **{key: np.asarray(value) for key, value in arrays.items()})


def load_arrays(path):
    """Reads an .npz file written by `save_arrays` into a dict of arrays."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _float32_exact(rng, *shape, scale=1.0):
    """Normal draws rounded to float32 and held in float64 (both sides read them exactly)."""
    return (scale * rng.standard_normal(shape)).astype(np.float32).astype(np.float64)


def _uniform_float32(rng, *shape):
    """U[0, 1) draws rounded to float32 and held in float64."""
    return rng.random(shape).astype(np.float32).astype(np.float64)


def _classifier_arrays(rng, prefix, outputs, hidden):
    """Weights of a `Classifier` (`_torch_networks`), keyed `prefix.layer.weight|bias`."""
    arrays = {
        f"{prefix}.conv.weight": _float32_exact(rng, CHANNELS, 3, 3, 3, scale=0.4),
        f"{prefix}.conv.bias": _float32_exact(rng, CHANNELS, scale=0.1),
    }
    width = CHANNELS * SIDE * SIDE
    if hidden:
        arrays[f"{prefix}.fc.weight"] = _float32_exact(rng, HIDDEN, width, scale=0.2)
        arrays[f"{prefix}.fc.bias"] = _float32_exact(rng, HIDDEN, scale=0.1)
        width = HIDDEN
    arrays[f"{prefix}.out.weight"] = _float32_exact(rng, outputs, width, scale=0.3)
    arrays[f"{prefix}.out.bias"] = _float32_exact(rng, outputs, scale=0.1)
    return arrays


def make_inputs(row, seed, steps):
    """The arrays both sides read for `row`: weights in PyTorch layout, inputs and draws.

    Args:
        row: One of `ROWS`.
        seed: NumPy seed.
        steps: Optimisation steps of an attack row.

    Returns:
        A dict of float64 / int64 arrays (float values exactly representable in float32).
    """
    if row not in ROWS:
        raise ValueError(f"`row` must be one of {ROWS}; received {row!r}.")
    rng = np.random.default_rng([seed, ROWS.index(row)])
    if row == "knn":
        return {
            "features": _float32_exact(rng, 12, 6),
            "labels": rng.integers(0, 3, 12),
            "reference_features": _float32_exact(rng, 20, 6),
            "reference_labels": np.repeat(np.arange(3), [6, 7, 7]),
        }
    if row == "fid":
        return {"features_a": _float32_exact(rng, 30, 4),
                "features_b": (_float32_exact(rng, 40, 4, scale=1.5) + 0.5).astype(np.float32)
                .astype(np.float64)}
    if row == "topn":
        return {"images": rng.random((40, SIDE, SIDE, 3)).astype(np.float32).astype(np.float64),
                "top_n": np.asarray(5), **_classifier_arrays(rng, "T", CLASSES, hidden=True)}
    if row in TRAINING_ROWS:  # the networks' weights are PyTorch's initialisation, seeded
        setting = TRAINING[row]
        side, classes, batch = setting["side"], setting["classes"], setting["batch"]
        arrays = {
            "seed": np.asarray(seed), "steps": np.asarray(steps),
            "images": _uniform_float32(rng, steps, batch, side, side, 3),
            "labels": rng.integers(0, classes, (steps, batch)),
            "probes": _uniform_float32(rng, PROBES, side, side, 3),
        }
        if setting["trigger_channels"]:
            arrays["trapdoor_labels"] = rng.integers(0, classes, (steps, batch))
            arrays["triggers"] = _uniform_float32(rng, classes, setting["trigger_channels"],
                                                  side, side)
        return arrays
    arrays = {
        "steps": np.asarray(steps),
        "classes": rng.permutation(CLASSES)[:IDENTITIES],
        "G.l1.weight": _float32_exact(rng, GEN_CHANNELS * SIDE * SIDE, Z_DIM, scale=0.5),
        "G.l1.bias": _float32_exact(rng, GEN_CHANNELS * SIDE * SIDE, scale=0.1),
        "G.conv.weight": _float32_exact(rng, 3, GEN_CHANNELS, 3, 3, scale=0.4),
        "G.conv.bias": _float32_exact(rng, 3, scale=0.1),
        **_classifier_arrays(rng, "T", CLASSES, hidden=True),
    }
    if row == "plgmi_prior":  # conditional G, projection D (`_torch_networks`), the draws
        arrays.update(_classifier_arrays(rng, "D", 1, hidden=False))
        width = GEN_CHANNELS * SIDE * SIDE
        arrays["G.emb.weight"] = _float32_exact(rng, CLASSES, width, scale=0.5)
        arrays["D.emb.weight"] = _float32_exact(rng, CLASSES, CHANNELS * SIDE * SIDE, scale=0.3)
        generator_steps = -(-steps // N_CRITIC)  # one before every N_CRITIC-th critic step
        arrays.update(
            images=_uniform_float32(rng, steps, PRIOR_BATCH, SIDE, SIDE, 3),
            labels=rng.integers(0, CLASSES, (steps, PRIOR_BATCH)),
            noise=_uniform_float32(rng, steps, PRIOR_BATCH, SIDE, SIDE, 3) / 256.0,  # exact
            generator_z=_float32_exact(rng, generator_steps, PRIOR_BATCH, Z_DIM),
            generator_y=rng.integers(0, CLASSES, (generator_steps, PRIOR_BATCH)),
            critic_z=_float32_exact(rng, steps, PRIOR_BATCH, Z_DIM),
            critic_y=rng.integers(0, CLASSES, (steps, PRIOR_BATCH)),
        )
    elif row in PRIOR_ROWS:  # batches, and the draws in the order both sides take them
        kedmi = row == "kedmi_prior"
        arrays.update(_classifier_arrays(rng, "D", CLASSES if kedmi else 1, hidden=False))
        batches = ("images", "unlabeled", "matching") if kedmi else ("images",)
        for key in batches:
            arrays[key] = _uniform_float32(rng, steps, PRIOR_BATCH, SIDE, SIDE, 3)
        arrays["normal"] = _float32_exact(rng, steps + steps // N_CRITIC, PRIOR_BATCH, Z_DIM)
        if not kedmi:  # the gradient penalty's interpolation weights
            arrays["uniform"] = _uniform_float32(rng, steps, PRIOR_BATCH)
    elif row == "kedmi":
        arrays.update(_classifier_arrays(rng, "D", CLASSES, hidden=False))
        arrays["eps"] = _float32_exact(rng, steps, IDENTITIES, RESTARTS, Z_DIM)
    elif row == "plgmi":  # a conditional generator (a class embedding added); no critic
        arrays["G.emb.weight"] = _float32_exact(rng, CLASSES, GEN_CHANNELS * SIDE * SIDE,
                                                scale=0.5)
        arrays["z0"] = _float32_exact(rng, IDENTITIES, RESTARTS, Z_DIM)
    else:
        arrays.update(_classifier_arrays(rng, "D", 1, hidden=False))
        arrays["z0"] = _float32_exact(rng, IDENTITIES, RESTARTS, Z_DIM)
    if row == "lomma":
        arrays.update(_classifier_arrays(rng, "S", CLASSES, hidden=True))
        arrays["p_reg"] = np.abs(_float32_exact(rng, HIDDEN, scale=0.5))
    return arrays


def format_table(results):
    """Markdown table of `results` (row -> dict with steps and differences)."""
    columns = ("as_is", "lifted", "lifted_epsilon_zero")
    lines = ["| row | steps | largest relative difference | with float32 casts lifted | "
             "and Adam epsilon 0 |", "|---|---|---|---|---|"]
    for row, result in results.items():
        values = [result.get(column) for column in columns]
        cells = " | ".join("-" if value is None else f"{value:.1e}" for value in values)
        lines.append(f"| {row} | {result['steps']} | {cells} |")
    return "\n".join(lines)


# === The reference side (runs under --reference_python; imports torch, never TensorFlow) ===


def _torch_networks(torch, arrays):
    """The small networks as PyTorch modules (NCHW), weights from `arrays`, in eval mode."""
    nn, F = torch.nn, torch.nn.functional

    class Generator(nn.Module):  # latents -> images in [0, 1], as the GMI generator's sigmoid
        def __init__(self, conditional=False):  # conditional: G(z, y), l1(z) + emb(y) first
            super().__init__()
            self.l1 = nn.Linear(Z_DIM, GEN_CHANNELS * SIDE * SIDE)
            self.conv = nn.Conv2d(GEN_CHANNELS, 3, 3, padding=1)
            self.emb = nn.Embedding(CLASSES, GEN_CHANNELS * SIDE * SIDE) if conditional else None

        def forward(self, z, y=None):
            x = self.l1(z) if self.emb is None else self.l1(z) + self.emb(y)
            x = torch.tanh(x.view(-1, GEN_CHANNELS, SIDE, SIDE))
            return torch.sigmoid(self.conv(x))

    class Classifier(nn.Module):  # returns (feature, logits) like the reference's models
        def __init__(self, outputs, hidden):
            super().__init__()
            self.conv = nn.Conv2d(3, CHANNELS, 3, padding=1)
            width = CHANNELS * SIDE * SIDE
            self.fc = nn.Linear(width, HIDDEN) if hidden else None
            self.out = nn.Linear(HIDDEN if hidden else width, outputs)
            self.hidden = hidden

        def forward(self, x):
            feature = torch.tanh(self.conv(x)).flatten(1)
            if self.hidden:
                feature = F.relu(self.fc(feature))
            return feature, self.out(feature)

    class Critic(Classifier):  # the WGAN critic returns its score as `(batch,)`
        def forward(self, x):
            return super().forward(x)[1].view(-1)

    class Projection(Classifier):  # D(x, y) = out(h) + <emb(y), h>, as snresnet64.py's head
        def __init__(self):
            super().__init__(1, False)
            self.emb = nn.Embedding(CLASSES, CHANNELS * SIDE * SIDE)

        def forward(self, x, y):
            feature, output = super().forward(x)
            return output + torch.sum(self.emb(y) * feature, dim=1, keepdim=True)

    def build(module, prefix):
        state = {key[len(prefix) + 1:]: torch.from_numpy(value)
                 for key, value in arrays.items() if key.startswith(prefix + ".")}
        module.load_state_dict(state)
        return module.double().eval()

    networks = {"T": build(Classifier(CLASSES, True), "T")}
    if "G.l1.weight" in arrays:
        networks["G"] = build(Generator("G.emb.weight" in arrays), "G")
    if "D.out.weight" in arrays:
        critic = arrays["D.out.weight"].shape[0] == 1
        discriminator = Critic(1, False) if critic else Classifier(CLASSES, False)
        networks["D"] = build(Projection() if "D.emb.weight" in arrays else discriminator, "D")
    if "S.out.weight" in arrays:
        networks["S"] = build(Classifier(CLASSES, True), "S")
    return networks


def _reference_helpers(repo, torch):
    """The reference's functions this recipe runs as written, loaded from the checkout."""
    namespace = {"torch": torch, "np": np, "os": os, "nn": torch.nn,
                 "F": torch.nn.functional}
    load = _speed.load_reference_functions
    return {
        "repo": repo,
        "calc_knn": load(os.path.join(repo, "plgmi", "evaluation.py"), ["calc_knn"],
                         namespace).calc_knn,
        "fid": _speed.load_reference_module(os.path.join(repo, "plgmi", "metrics", "fid.py"),
                                            "reference_fid"),
        "log_sum_exp": load(os.path.join(repo, "plgmi", "baselines", "utils.py"),
                            ["log_sum_exp"], namespace).log_sum_exp,
        "reparameterize": load(os.path.join(repo, "plgmi", "baselines", "recovery.py"),
                               ["reparameterize"], namespace).reparameterize,
        "lomma": load(os.path.join(repo, "lomma", "attack.py"),
                      ["reparameterize", "reg_loss", "iden_loss"], dict(namespace)),
    }


def reference_knn(torch, helpers, arrays):
    """plgmi/evaluation.py `calc_knn`, as written, reading the private features from files."""
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "private_feats.npy"), arrays["reference_features"])
        np.save(os.path.join(folder, "private_targets.npy"), arrays["reference_labels"])
        # calc_knn casts the file's features to float32 (evaluation.py:114): exact here, as
        # the inputs are float32 values; the queries stay float64.
        value = helpers["calc_knn"](torch.from_numpy(arrays["features"]),
                                    torch.from_numpy(arrays["labels"]), folder)
    return {"knn": np.asarray(value)}


def reference_fid(torch, helpers, arrays):
    """plgmi/metrics/fid.py: the statistics of fid.py:132-133, then its Frechet distance."""
    fid = helpers["fid"]
    statistics = [(np.mean(act, axis=0), np.cov(act, rowvar=False))
                  for act in (arrays["features_a"], arrays["features_b"])]
    return {"fid": np.asarray(fid.calculate_frechet_distance(*statistics[0], *statistics[1]))}


def reference_topn(torch, helpers, arrays):
    """plgmi/top_n_selection.py:141-142 (softmax of the target's logits) and :161-178 (the
    priority queue per class), as written but the data loader and the copying of files."""
    import queue

    T = _torch_networks(torch, arrays)["T"]
    images = torch.from_numpy(arrays["images"].transpose(0, 3, 1, 2).copy())
    top_n = int(arrays["top_n"])
    with torch.no_grad():
        logits = T(images)[-1]
        all_images_prob = torch.nn.functional.softmax(logits, dim=1)
    selected = []
    for class_idx in range(CLASSES):
        bs = all_images_prob.shape[0]
        q = queue.PriorityQueue()
        class_idx_prob = all_images_prob[:, class_idx]
        for j in range(bs):
            current_value = float(class_idx_prob[j])
            if q.qsize() < top_n:
                q.put([current_value, j])
            else:
                current_min = q.get()
                if current_value < current_min[0]:
                    q.put(current_min)
                else:
                    q.put([current_value, j])
        ascending = [q.get()[1] for _ in range(q.qsize())]  # the queue pops the least first
        selected.append(ascending[::-1])
    return {"indices": np.asarray(selected, dtype=np.int64)}


def _gmi_loop(torch, networks, z, iden, steps, identity_loss):
    """plgmi/baselines/recovery.py:204-237 (`inversion`, one seed), as written but `.cuda()`,
    the float32 `.float()` casts and the logging; lomma/attack.py:214-248 is the same loop
    with LOMMA's `iden_loss`. Returns z after every step."""
    G, D = networks["G"], networks["D"]
    lr, momentum, lamda, clip_range = LEARNING_RATE, MOMENTUM, IDENTITY_WEIGHT, 1
    z.requires_grad = True
    v = torch.zeros(z.shape, dtype=torch.float64)
    trajectory = []
    for i in range(steps):
        fake = G(z)
        label = D(fake)
        if z.grad is not None:
            z.grad.data.zero_()
        Prior_Loss = - label.mean()
        Iden_Loss = identity_loss(fake, iden)
        Total_Loss = Prior_Loss + lamda * Iden_Loss
        Total_Loss.backward()
        v_prev = v.clone()
        gradient = z.grad.data
        v = momentum * v - lr * gradient
        z = z + (- momentum * v_prev + (1 + momentum) * v)
        z = torch.clamp(z.detach(), -clip_range, clip_range)
        z.requires_grad = True
        trajectory.append(z.detach().numpy())
    return np.stack(trajectory)


def reference_gmi(torch, helpers, arrays, lomma=False):
    """GMI (or LOMMA on GMI): one reference run per restart, as the reference's seeds."""
    networks = _torch_networks(torch, arrays)
    iden = torch.from_numpy(arrays["classes"]).long()
    if lomma:  # lomma/attack.py:83-104 `iden_loss`, as written (variant "ours": T + surrogate)
        criterion = torch.nn.NLLLoss()
        fea_mean = [torch.from_numpy(arrays["p_reg"])]
        fea_logvar = [torch.zeros(HIDDEN)]  # only drawn from (attack.py:14), never used
        models = [networks["T"], networks["S"]]

        def identity_loss(fake, iden):
            return helpers["lomma"].iden_loss(models, fake, iden, "logit_loss", criterion,
                                              fea_mean, fea_logvar, LOMMA_REG)
    else:
        criterion = torch.nn.CrossEntropyLoss()

        def identity_loss(fake, iden):
            return criterion(networks["T"](fake)[-1], iden)  # recovery.py:215, 226

    runs = [_gmi_loop(torch, networks, torch.from_numpy(arrays["z0"][:, r].copy()), iden,
                      int(arrays["steps"]), identity_loss) for r in range(RESTARTS)]
    return {"z": np.stack(runs, axis=2)}  # (steps, identities, restarts, z_dim)


def reference_kedmi(torch, helpers, arrays, adam_epsilon=None):
    """plgmi/baselines/recovery.py:71-102 (`dist_inversion`, improved), one run per restart,
    as written but the `.cuda()` calls and the logging; `reparameterize` (recovery.py:36-47)
    runs as written, its `torch.randn_like` returning the injected eps. `adam_epsilon`, if
    given, replaces Adam's default 1e-8 (to isolate where each Adam adds its epsilon)."""
    networks = _torch_networks(torch, arrays)
    G, D, T = networks["G"], networks["D"], networks["T"]
    F, log_sum_exp = torch.nn.functional, helpers["log_sum_exp"]
    iden = torch.from_numpy(arrays["classes"]).long()
    criterion = torch.nn.CrossEntropyLoss()
    lr, lamda, bs = LEARNING_RATE, IDENTITY_WEIGHT, IDENTITIES
    means, log_variances = [], []
    for r in range(RESTARTS):
        draws = iter(torch.from_numpy(eps[:, r].copy()) for eps in arrays["eps"])
        randn_like = torch.randn_like
        torch.randn_like = lambda tensor: next(draws)
        try:
            mu = torch.zeros(bs, Z_DIM, requires_grad=True)  # the reference's z_dim is 100
            log_var = torch.ones(bs, Z_DIM, requires_grad=True)
            params = [mu, log_var]
            solver = torch.optim.Adam(params, lr=lr, **(
                {} if adam_epsilon is None else {"eps": adam_epsilon}))
            mu_steps, log_var_steps = [], []
            for i in range(int(arrays["steps"])):
                z = helpers["reparameterize"](mu, log_var)
                fake = G(z)
                _, label = D(fake)
                out = T(fake)[-1]
                for p in params:
                    if p.grad is not None:
                        p.grad.data.zero_()
                Prior_Loss = (torch.mean(F.softplus(log_sum_exp(label)))
                              - torch.mean(log_sum_exp(label)))
                Iden_Loss = criterion(out, iden)
                Total_Loss = Prior_Loss + lamda * Iden_Loss
                Total_Loss.backward()
                solver.step()
                mu_steps.append(mu.detach().numpy().copy())
                log_var_steps.append(log_var.detach().numpy().copy())
        finally:
            torch.randn_like = randn_like
        means.append(np.stack(mu_steps))
        log_variances.append(np.stack(log_var_steps))
    return {"mu": np.stack(means, axis=2), "log_var": np.stack(log_variances, axis=2)}


def reference_plgmi(torch, helpers, arrays, adam_epsilon=None):
    """plgmi/reconstruct.py:86-116 (`inversion`, one seed), one run per restart, as written
    but `.cuda()`, the evaluation and the logging, with the margin loss; `max_margin_loss`
    (plgmi/losses.py:7-13) runs as written. z is the injected z0 (`utils.sample_z`,
    reconstruct.py:87-91); the augmentation (reconstruct.py:74-79: kornia's random resized
    crop, colour jitter, flip, rotation) is a fixed horizontal flip of every image, on both
    sides. `adam_epsilon`, if given, replaces Adam's default 1e-8."""
    networks = _torch_networks(torch, arrays)
    G, T = networks["G"], networks["T"]
    L = _speed.load_reference_functions(os.path.join(helpers["repo"], "plgmi", "losses.py"),
                                        ["max_margin_loss"], {"torch": torch})
    iden = torch.from_numpy(arrays["classes"]).long()
    aug_list = lambda x: torch.flip(x, dims=[3])  # noqa: E731 (fixed; see above)
    runs = []
    for r in range(RESTARTS):
        z = torch.from_numpy(arrays["z0"][:, r].copy()).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=PLGMI_LR, **(
            {} if adam_epsilon is None else {"eps": adam_epsilon}))
        trajectory = []
        for i in range(int(arrays["steps"])):
            fake = G(z, iden)
            out1 = T(aug_list(fake))[-1]
            out2 = T(aug_list(fake))[-1]
            inv_loss = L.max_margin_loss(out1, iden) + L.max_margin_loss(out2, iden)
            optimizer.zero_grad()
            inv_loss.backward()
            optimizer.step()
            trajectory.append(z.detach().numpy().copy())
        runs.append(np.stack(trajectory))
    return {"z": np.stack(runs, axis=2)}  # (steps, identities, restarts, z_dim)


def reference_plgmi_prior(torch, helpers, arrays, adam_epsilon=None):
    """plgmi/train_cgan.py:275-279 (optimisers, hinge losses) and :296-353 (the iteration: a
    generator step, then `n_dis` discriminator steps), as written but `.cuda()`, the MNIST
    channel expansion and the logging; losses.py's `GenLoss`, `DisLoss` and `max_margin_loss`
    run as written. `sample_from_gen` (dataset.py:28-48: z, pseudo_y, G(z, pseudo_y)) takes
    the injected z and y, `sample_from_data` the row's batches with the injected
    `_noise_adder` noise (train_cgan.py:236); the augmentation (train_cgan.py:288-293) is a
    fixed horizontal flip of every image, on both sides. The target is in eval mode, G and D
    in train mode. Returns how the steps changed the weights of G and D."""
    networks = _torch_networks(torch, arrays)
    gen, dis, target_model = networks["G"].train(), networks["D"].train(), networks["T"]
    L = _speed.load_reference_module(os.path.join(helpers["repo"], "plgmi", "losses.py"),
                                     "reference_plgmi_losses")
    epsilon = {} if adam_epsilon is None else {"eps": adam_epsilon}
    opt_gen = torch.optim.Adam(gen.parameters(), PRIOR_LR, CGAN_BETAS, **epsilon)
    opt_dis = torch.optim.Adam(dis.parameters(), PRIOR_LR, CGAN_BETAS, **epsilon)
    gen_criterion = L.GenLoss("hinge", False)
    dis_criterion = L.DisLoss("hinge", False)
    aug_list = lambda x: torch.flip(x, dims=[3])  # noqa: E731 (fixed; see above)
    tensor = torch.from_numpy
    draws = {"generator": iter(zip(arrays["generator_z"], arrays["generator_y"])),
             "critic": iter(zip(arrays["critic_z"], arrays["critic_y"]))}
    data = iter(zip(arrays["images"], arrays["noise"], arrays["labels"]))

    def sample_from_gen(kind):
        z, pseudo_y = (tensor(value) for value in next(draws[kind]))
        return gen(z, pseudo_y), pseudo_y, z

    def sample_from_data():
        image, noise, y = next(data)
        return tensor((image + noise).transpose(0, 3, 1, 2).copy()), tensor(y)

    critic_steps = len(arrays["images"])
    for n_iter in range(-(-critic_steps // N_CRITIC)):
        for i in range(min(N_CRITIC, critic_steps - n_iter * N_CRITIC)):
            if i == 0:
                fake, pseudo_y, _ = sample_from_gen("generator")
                dis_fake = dis(fake, pseudo_y)
                fake_aug = aug_list(fake)
                out = target_model(fake_aug)[-1]
                inv_loss = L.max_margin_loss(out, pseudo_y)
                dis_real = None
                loss_gen = gen_criterion(dis_fake, dis_real)
                loss_all = loss_gen + inv_loss * CGAN_ALPHA
                gen.zero_grad()
                loss_all.backward()
                opt_gen.step()
            fake, pseudo_y, _ = sample_from_gen("critic")
            real, y = sample_from_data()
            dis_fake, dis_real = dis(fake, pseudo_y), dis(real, y)
            loss_dis = dis_criterion(dis_fake, dis_real)
            dis.zero_grad()
            loss_dis.backward()
            opt_dis.step()
    return {f"{prefix}.{key}": value.detach().numpy() - arrays[f"{prefix}.{key}"]
            for prefix, network in (("G", gen), ("D", dis))
            for key, value in network.state_dict().items()}


def reference_gmi_prior(torch, helpers, arrays, adam_epsilon=None):
    """plgmi/baselines/GMI.py:91-134 (the optimisers and the training loop body), as written
    but the data loading, `.cuda()` and the logging; `freeze`, `unfreeze` and
    `gradient_penalty` (GMI.py:23-45) run as written. `torch.randn` / `torch.rand` return the
    injected draws. Returns how the steps changed the weights of G and DG."""
    networks = _torch_networks(torch, arrays)
    G, DG = networks["G"].train(), networks["D"].train()
    namespace = {"torch": torch, "grad": torch.autograd.grad, "DG": DG}
    gmi = _speed.load_reference_functions(
        os.path.join(helpers["repo"], "plgmi", "baselines", "GMI.py"),
        ["freeze", "unfreeze", "gradient_penalty"], namespace)
    freeze, unfreeze, gradient_penalty = gmi.freeze, gmi.unfreeze, gmi.gradient_penalty
    normal = iter(torch.from_numpy(draw) for draw in arrays["normal"])
    uniform = iter(torch.from_numpy(draw) for draw in arrays["uniform"])
    saved = torch.randn, torch.rand, torch.Tensor.cuda
    torch.randn = lambda *shape: next(normal).reshape(shape)
    torch.rand = lambda shape: next(uniform).reshape(shape)
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor
    try:
        lr, z_dim, n_critic = PRIOR_LR, Z_DIM, N_CRITIC
        epsilon = {} if adam_epsilon is None else {"eps": adam_epsilon}
        dg_optimizer = torch.optim.Adam(DG.parameters(), lr=lr, betas=PRIOR_BETAS, **epsilon)
        g_optimizer = torch.optim.Adam(G.parameters(), lr=lr, betas=PRIOR_BETAS, **epsilon)
        step = 0
        for batch in arrays["images"]:
            step += 1
            imgs = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
            bs = imgs.size(0)
            freeze(G)
            unfreeze(DG)
            z = torch.randn(bs, z_dim)
            f_imgs = G(z)
            r_logit = DG(imgs)
            f_logit = DG(f_imgs)
            wd = r_logit.mean() - f_logit.mean()  # Wasserstein-1 Distance
            gp = gradient_penalty(imgs.data, f_imgs.data)
            dg_loss = - wd + gp * PENALTY_WEIGHT
            dg_optimizer.zero_grad()
            dg_loss.backward()
            dg_optimizer.step()
            if step % n_critic == 0:
                freeze(DG)
                unfreeze(G)
                z = torch.randn(bs, z_dim)
                f_imgs = G(z)
                logit_dg = DG(f_imgs)
                g_loss = - logit_dg.mean()
                g_optimizer.zero_grad()
                g_loss.backward()
                g_optimizer.step()
    finally:
        torch.randn, torch.rand, torch.Tensor.cuda = saved
    return {f"{prefix}.{key}": value.detach().numpy() - arrays[f"{prefix}.{key}"]
            for prefix, network in (("G", G), ("D", DG))
            for key, value in network.state_dict().items()}


def reference_kedmi_prior(torch, helpers, arrays, adam_epsilon=None):
    """plgmi/baselines/KED_MI.py:126-197 (the optimisers and the training loop body), as
    written but the data loading, `.cuda()` and the logging (the unlabelled batches come from
    the row's arrays); `softXEnt`, `HLoss` (plgmi/baselines/utils.py:425-444) and KED_MI.py's
    `freeze`, `unfreeze`, `log_sum_exp` (:25-52) run as written; `torch.randn` returns the
    injected draws. T is not put in eval mode, as there (it has no batch norm or dropout).
    Returns how the steps changed the weights of G and DG."""
    F = torch.nn.functional
    networks = _torch_networks(torch, arrays)
    G, DG, T = networks["G"].train(), networks["D"].train(), networks["T"].train()
    namespace = {"torch": torch, "nn": torch.nn, "F": F}
    baselines = os.path.join(helpers["repo"], "plgmi", "baselines")
    load = _speed.load_reference_functions
    kedmi = load(os.path.join(baselines, "KED_MI.py"), ["freeze", "unfreeze", "log_sum_exp"],
                 namespace)
    utils = load(os.path.join(baselines, "utils.py"), ["softXEnt", "HLoss"], namespace)
    freeze, unfreeze, log_sum_exp = kedmi.freeze, kedmi.unfreeze, kedmi.log_sum_exp
    softXEnt, HLoss = utils.softXEnt, utils.HLoss
    normal = iter(torch.from_numpy(draw) for draw in arrays["normal"])
    randn = torch.randn
    torch.randn = lambda *shape: next(normal).reshape(shape)

    def nchw(batch):
        return torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())

    try:
        lr, z_dim, n_critic = PRIOR_LR, Z_DIM, N_CRITIC
        epsilon = {} if adam_epsilon is None else {"eps": adam_epsilon}
        dg_optimizer = torch.optim.Adam(DG.parameters(), lr=lr, betas=PRIOR_BETAS, **epsilon)
        g_optimizer = torch.optim.Adam(G.parameters(), lr=lr, betas=PRIOR_BETAS, **epsilon)
        entropy = HLoss()
        step = 0
        for i in range(len(arrays["images"])):
            step += 1
            imgs = nchw(arrays["images"][i])
            bs = imgs.size(0)
            x_unlabel = nchw(arrays["unlabeled"][i])
            x_unlabel2 = nchw(arrays["matching"][i])
            freeze(G)
            unfreeze(DG)
            z = torch.randn(bs, z_dim)
            f_imgs = G(z)
            y_prob = T(imgs)[-1]
            _, output_label = DG(imgs)
            _, output_unlabel = DG(x_unlabel)
            _, output_fake = DG(f_imgs)
            loss_lab = softXEnt(output_label, y_prob)
            loss_unlab = 0.5 * (torch.mean(F.softplus(log_sum_exp(output_unlabel))) - torch.mean(
                log_sum_exp(output_unlabel)) + torch.mean(F.softplus(log_sum_exp(output_fake))))
            dg_loss = loss_lab + loss_unlab
            dg_optimizer.zero_grad()
            dg_loss.backward()
            dg_optimizer.step()
            if step % n_critic == 0:
                freeze(DG)
                unfreeze(G)
                z = torch.randn(bs, z_dim)
                f_imgs = G(z)
                mom_gen, output_fake = DG(f_imgs)
                mom_unlabel, _ = DG(x_unlabel2)
                mom_gen = torch.mean(mom_gen, dim=0)
                mom_unlabel = torch.mean(mom_unlabel, dim=0)
                Hloss = entropy(output_fake)
                g_loss = torch.mean((mom_gen - mom_unlabel).abs()) + ENTROPY_WEIGHT * Hloss
                g_optimizer.zero_grad()
                g_loss.backward()
                g_optimizer.step()
    finally:
        torch.randn = randn
    return {f"{prefix}.{key}": value.detach().numpy() - arrays[f"{prefix}.{key}"]
            for prefix, network in (("G", G), ("D", DG))
            for key, value in network.state_dict().items()}


def reference_training(torch, helpers, arrays, row, adam_epsilon=None):
    """engine.py `train`, the loop body (engine.py:129-255) for the row's batches, as written
    but the data loader, `.cuda()`, the feature-discriminator branches (off in every config)
    and the bookkeeping; the augmentation (engine.py:80-84) is a fixed horizontal flip of
    every image (kornia's RandomHorizontalFlip with every draw below p), identity without
    trapdoors as there (engine.py:116). The networks are the reference's `VGG16` / `IR18`
    (classify.py, torchvision's random initialisation under `torch.manual_seed(seed)`), the
    discriminator the same class with one output (utils.py:186 `init_model(model_name, 1)`),
    both optimisers utils.py:221 `init_optimizer`'s for the config, NegLS loss.py's
    `NegLSCrossEntropyLoss` stepped to the row's epoch (engine.py:123-126) and the trapdoor
    criterion a copy of the main one (engine.py:111-112; train.py:47 builds the CelebA NegLS
    one alike). Returns the initial and final state dicts, and after every step the logits of
    the probes (inference mode), the discriminator's on them and the triggers."""
    import copy

    nn = torch.nn
    setting = TRAINING[row]
    ref = _speed.Reference(helpers["repo"])
    reference_loss = _speed.load_reference_module(os.path.join(helpers["repo"], "loss.py"),
                                                  "reference_loss")
    network = {"vgg16_bn": ref.classify.VGG16, "ir18": ref.classify.IR18}[setting["network"]]
    if setting.get("bido"):  # utils.py:186 `init_model(..., bido=True)`
        network = ref.classify.IR18_BiDO
    torch_float32 = torch

    class Float64Torch:  # loss.py:91, 100 cast the kernels with `.type(torch.FloatTensor)`
        FloatTensor = torch.DoubleTensor

        def __getattr__(self, name):
            return getattr(torch_float32, name)

    reference_loss.torch = Float64Torch()
    torch.manual_seed(int(arrays["seed"]))
    n_classes, trapdoor = setting["classes"], setting["trigger_channels"] > 0
    dataset_name = setting["config"].split("/")[0]
    model = network(n_classes)
    D = network(1) if trapdoor else None

    def init_optimizer(parameters):  # utils.py:221-242 for the row's config
        if setting["adam"]:
            return torch.optim.Adam(params=parameters, lr=TRAINING_ADAM_LR, weight_decay=0, **(
                {} if adam_epsilon is None else {"eps": adam_epsilon}))
        return torch.optim.SGD(params=parameters, **TRAINING_SGD)

    def state(network, prefix):  # IR18_BiDO's keys (classify.py:167-185) as IR18's
        renamed = {"input_layer": "feature", **{f"layer{i}": f"feature.{i + 3}"
                                                for i in range(1, 5)}}
        return {f"{prefix}.{renamed.get(key.split('.')[0], key.split('.')[0])}"
                f"{key[len(key.split('.')[0]):]}": value.detach().numpy().copy()
                for key, value in network.state_dict().items()
                if not key.endswith("num_batches_tracked")}

    outputs = state(model, "init.C")
    optimizer = init_optimizer(model.parameters())
    if setting["negls"] is None:
        criterion = nn.CrossEntropyLoss()
    else:
        epoch, n_epochs, schedule = setting["negls"]
        criterion = reference_loss.NegLSCrossEntropyLoss(
            NEGLS, scheduler=getattr(reference_loss, schedule))
        criterion.step(epoch, n_epochs)  # engine.py:123-124
    logits, realness, trigger_steps = [], [], []
    if trapdoor:
        outputs.update(state(D, "init.D"))
        optimizer_D = init_optimizer(D.parameters())
        aug_list = lambda x: torch.flip(x, dims=[3])  # noqa: E731 (engine.py:81-85, fixed)
        alpha, beta = TRAPDOOR_SETTINGS["alpha"], TRAPDOOR_SETTINGS["beta"]
        trigger_step = TRAPDOOR_SETTINGS["step_size"]
        triggers = torch.from_numpy(arrays["triggers"].copy())
        trapdoor_criterion = copy.deepcopy(criterion)  # engine.py:111-112
        if setting["negls"] is not None:
            trapdoor_criterion.step(epoch, n_epochs)  # engine.py:125-126
    else:
        aug_list = lambda x: x  # noqa: E731 (engine.py:116)
    bido_criterion = reference_loss.BiDOLoss(n_classes=n_classes) if setting.get("bido") else None
    blend = ref.engine.blend
    probes = torch.from_numpy(arrays["probes"].transpose(0, 3, 1, 2).copy())
    for i in range(int(arrays["steps"])):
        img = torch.from_numpy(arrays["images"][i].transpose(0, 3, 1, 2).copy())
        iden = torch.from_numpy(arrays["labels"][i])
        bs = img.size(0)
        iden = iden.view(-1)
        if trapdoor:  # engine.py:143-210, the discriminator loss on
            trapdoor_iden = torch.from_numpy(arrays["trapdoor_labels"][i])
            model.eval()
            triggers.requires_grad = True
            key = torch.stack([triggers[j] for j in trapdoor_iden], dim=0)
            if dataset_name == 'mnist':
                key = key.expand(-1, 3, -1, -1)
            trapdoor_img = blend(img, key, alpha)
            trigger_loss = 0
            D.train()
            concat_feat, concat_prob = D(torch.concat([img, trapdoor_img.detach()]))
            D_loss = nn.BCEWithLogitsLoss()(
                concat_prob,
                torch.concat([torch.ones((bs, 1)), torch.zeros((bs, 1))])
            )
            optimizer_D.zero_grad()
            D_loss.backward()
            optimizer_D.step()
            D.eval()
            trapdoor_feats, trapdoor_out_prob = D(trapdoor_img)
            trigger_loss += nn.BCEWithLogitsLoss()(trapdoor_out_prob, torch.ones((bs, 1)))
            aug_trapdoor_img = aug_list(trapdoor_img)
            trigger_feats, trigger_out_prob = model(aug_trapdoor_img)
            trigger_loss += trapdoor_criterion(trigger_out_prob, trapdoor_iden)
            trigger_loss.backward()
            grad = triggers.grad.data
            triggers.data = (triggers.data - trigger_step * grad.sign()).clamp(min=0, max=1)
            triggers.grad.detach_()
            triggers.grad.zero_()
            triggers.requires_grad = False
        model.train()  # engine.py:215-255
        aug_img = aug_list(img)
        if trapdoor:
            key = torch.stack([triggers[j] for j in trapdoor_iden], dim=0)
            if dataset_name == 'mnist':
                key = key.expand(-1, 3, -1, -1)
            trapdoor_img = blend(img, key, alpha)
            aug_trapdoor_img = aug_list(trapdoor_img)
            concat_feat, concat_prob = model(torch.concat([aug_img, aug_trapdoor_img]))
            feats, out_prob = concat_feat[:bs], concat_prob[:bs]
            trapdoor_feats, trapdoor_out_prob = concat_feat[bs:], concat_prob[bs:]
            cross_loss = criterion(out_prob, iden)
            trapdoor_loss = trapdoor_criterion(trapdoor_out_prob, trapdoor_iden)
            loss = (1-beta) * cross_loss + beta * trapdoor_loss
        else:
            feats, out_prob = model(aug_img)
            cross_loss = criterion(out_prob, iden)
            loss = cross_loss
        if bido_criterion:
            bido_loss = bido_criterion(aug_img, feats, iden)
            loss += bido_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # the compared values, in inference mode
            model.eval()
            logits.append(model(probes)[-1].numpy().copy())
            if trapdoor:
                realness.append(D(probes)[-1].numpy().copy())
                trigger_steps.append(triggers.numpy().copy())
    outputs.update(state(model, "final.C"))
    outputs["logits"] = np.stack(logits)
    if trapdoor:
        outputs.update(realness=np.stack(realness), triggers=np.stack(trigger_steps))
    return outputs


REFERENCE_ROWS = {
    "knn": reference_knn,
    "fid": reference_fid,
    "topn": reference_topn,
    "gmi": reference_gmi,
    "kedmi": reference_kedmi,
    "lomma": lambda torch, helpers, arrays: reference_gmi(torch, helpers, arrays, lomma=True),
    "gmi_prior": reference_gmi_prior,
    "kedmi_prior": reference_kedmi_prior,
    "plgmi": reference_plgmi,
    "plgmi_prior": reference_plgmi_prior,
    **{row: functools.partial(reference_training, row=row) for row in TRAINING_ROWS},
}


def reference_worker(settings):
    """Runs one row of the reference on `settings['inputs']`; writes `settings['outputs']`."""
    import torch

    torch.set_default_dtype(torch.float64)
    helpers = _reference_helpers(settings["repo"], torch)
    options = {"adam_epsilon": settings["adam_epsilon"]} if "adam_epsilon" in settings else {}
    outputs = REFERENCE_ROWS[settings["row"]](torch, helpers, load_arrays(settings["inputs"]),
                                              **options)
    save_arrays(settings["outputs"], outputs)
    return {"torch": torch.__version__}


# === Our side (runs under this interpreter; imports TensorFlow, never torch) ===


def _keras_networks(arrays):
    """The networks of `_torch_networks` as float64 Keras models (NHWC) from the same arrays;
    under "layers", each Keras layer by its PyTorch prefix."""
    import keras

    layers = {}  # PyTorch prefix -> Keras layer

    def conv(prefix, filters, x):
        layer = layers[prefix] = keras.layers.Conv2D(filters, 3, padding="same", dtype="float64")
        y = layer(x)
        layer.set_weights([arrays[f"{prefix}.weight"].transpose(2, 3, 1, 0),
                           arrays[f"{prefix}.bias"]])
        return y

    def dense(prefix, units, x, **kwargs):
        layer = layers[prefix] = keras.layers.Dense(units, dtype="float64", **kwargs)
        y = layer(x)
        layer.set_weights([arrays[f"{prefix}.weight"].T, arrays[f"{prefix}.bias"]])
        return y

    def tanh(x):  # not LeakyReLU: Keras's holds its slope 0.2 in float32
        return keras.layers.Activation("tanh", dtype="float64")(x)

    networks = {"layers": layers}
    if "G.l1.weight" in arrays:
        z = keras.Input((Z_DIM,), dtype="float64")
        x = dense("G.l1", GEN_CHANNELS * SIDE * SIDE, z)
        inputs = z
        if "G.emb.weight" in arrays:  # conditional: [z, labels]
            labels = keras.Input((), dtype="int32")
            embedding = layers["G.emb"] = keras.layers.Embedding(
                CLASSES, GEN_CHANNELS * SIDE * SIDE, dtype="float64")
            x = keras.layers.Add(dtype="float64")([x, embedding(labels)])
            embedding.set_weights([arrays["G.emb.weight"]])
            inputs = [z, labels]
        x = keras.layers.Reshape((GEN_CHANNELS, SIDE, SIDE), dtype="float64")(x)
        x = tanh(keras.layers.Permute((2, 3, 1), dtype="float64")(x))
        images = keras.layers.Activation("sigmoid", dtype="float64")(conv("G.conv", 3, x))
        networks["G"] = keras.Model(inputs, images)

    def classifier(prefix, outputs, hidden):
        image = keras.Input((SIDE, SIDE, 3), dtype="float64")
        x = tanh(conv(f"{prefix}.conv", CHANNELS, image))
        x = keras.layers.Permute((3, 1, 2), dtype="float64")(x)  # flatten in PyTorch's CHW
        x = keras.layers.Flatten(dtype="float64")(x)
        if hidden:
            x = dense(f"{prefix}.fc", HIDDEN, x, activation="relu")
        return keras.Model(image, dense(f"{prefix}.out", outputs, x, name="logits"))

    for prefix in ("T", "S"):
        if f"{prefix}.out.weight" in arrays:
            networks[prefix] = classifier(prefix, CLASSES, True)
    if "D.emb.weight" in arrays:  # the projection discriminator: [images, labels]
        image, labels = keras.Input((SIDE, SIDE, 3), dtype="float64"), keras.Input(
            (), dtype="int32")
        x = tanh(conv("D.conv", CHANNELS, image))
        x = keras.layers.Permute((3, 1, 2), dtype="float64")(x)
        feature = keras.layers.Flatten(dtype="float64")(x)
        embedding = layers["D.emb"] = keras.layers.Embedding(
            CLASSES, CHANNELS * SIDE * SIDE, dtype="float64")
        projection = keras.layers.Dot(axes=1, dtype="float64")([embedding(labels), feature])
        embedding.set_weights([arrays["D.emb.weight"]])
        score = keras.layers.Add(dtype="float64")([dense("D.out", 1, feature), projection])
        networks["D"] = keras.Model([image, labels], score)
    elif "D.out.weight" in arrays:
        networks["D"] = classifier("D", arrays["D.out.weight"].shape[0], False)
    return networks


@contextlib.contextmanager
def injected_draws(module, name, draws):
    """Makes the random op `module.name` (shape first) return the arrays of `draws` in turn.

    Each draw is returned as float64 (int32 for an int64 array, e.g. `randint`'s; float32
    for a float32 array), reshaped to the requested shape (of the same size).

    Raises:
        RuntimeError: On exit, if not every draw was taken; on a call past the last one or
            with another size than the next draw.
    """
    import keras

    queue = list(draws)
    original = getattr(module, name)

    def take(shape, *args, **kwargs):
        if not queue:
            raise RuntimeError("More random draws were asked for than were injected.")
        draw = queue.pop(0)
        shape = tuple(int(size) for size in shape)
        if int(np.prod(shape)) != draw.size:
            raise RuntimeError(f"A draw of shape {shape} was asked; {draw.shape} is next.")
        dtype = {np.dtype("int64"): "int32", np.dtype("float32"): "float32"}.get(
            draw.dtype, "float64")
        return keras.ops.cast(draw.reshape(shape), dtype)  # not lifted: no float64 input

    setattr(module, name, take)
    try:
        yield
    finally:
        setattr(module, name, original)
    if queue:
        raise RuntimeError(f"{len(queue)} injected draws were not taken.")


@contextlib.contextmanager
def float32_casts_lifted():
    """Leaves float64 tensors float64 where our attacks cast or convert to float32, gives
    the identity batch weights unrounded (their float32 values are 1 / batch size rounded),
    and sends float64 inputs of `FusedBatchNorm` down Keras's path (its fused kernel,
    `tf.raw_ops.FusedBatchNormV3`, has no float64 kernel: fused_batch_norm.py:84 casts to
    float32)."""
    import keras
    from keras import ops

    from trapmid_tf.attacks import inversion
    from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm

    cast, convert, weights = ops.cast, ops.convert_to_tensor, inversion.reference_batch_weights

    def lifted_cast(x, dtype):
        # The scalar loss cast of inversion.py `minimize` stays: its gradient is exact, and
        # its while_loop holds a float32 loss.
        float64 = hasattr(x, "dtype") and keras.backend.standardize_dtype(x.dtype) == "float64"
        if dtype == "float32" and float64 and len(ops.shape(x)) > 0:
            return x
        return cast(x, dtype)

    def lifted_convert(x, dtype=None, **kwargs):
        # Under a float64 floatx, float32 requests (the GMI prior's penalty inputs) are float64.
        if dtype == "float32" and keras.config.floatx() == "float64":
            dtype = "float64"
        return convert(x, dtype, **kwargs)

    def exact_weights(*args, **kwargs):
        return 1.0 / np.round(1.0 / weights(*args, **kwargs).astype(np.float64))

    fused_applies = FusedBatchNorm._fused_kernel_applies

    def float32_fused_only(layer, inputs, mask):
        float64 = keras.backend.standardize_dtype(inputs.dtype) == "float64"
        return not float64 and fused_applies(layer, inputs, mask)

    ops.cast, ops.convert_to_tensor = lifted_cast, lifted_convert
    inversion.reference_batch_weights = exact_weights
    FusedBatchNorm._fused_kernel_applies = float32_fused_only
    try:
        yield
    finally:
        ops.cast, ops.convert_to_tensor = cast, convert
        inversion.reference_batch_weights = weights
        FusedBatchNorm._fused_kernel_applies = fused_applies


def ours_metric(row, arrays):
    """Our KNN distance, FID or top-n selection of the row's arrays."""
    from trapmid_tf import metrics
    from trapmid_tf.attacks.plgmi_prior import most_confident

    if row == "topn":
        target = _keras_networks(arrays)["T"]
        return {"indices": most_confident(target, arrays["images"], int(arrays["top_n"]))}
    if row == "knn":
        value = metrics.knn_distance(arrays["features"], arrays["labels"],
                                     arrays["reference_features"], arrays["reference_labels"])
        return {"knn": np.asarray(value)}
    return {"fid": np.asarray(metrics.frechet_distance(arrays["features_a"],
                                                       arrays["features_b"]))}


def _float64_hyperparameters(optimizer):
    """Gives Keras's SGD momentum / Adam betas as float64 scalars: Keras casts a Python float
    hyperparameter through a float32 tensor (keras/src/optimizers/sgd.py:104, adam.py:107-112
    `ops.cast(self.momentum / beta, variable.dtype)`), so 0.9 becomes 0.8999999761..."""
    for name in ("momentum", "beta_1", "beta_2"):
        if isinstance(getattr(optimizer, name, None), float):
            setattr(optimizer, name, np.float64(getattr(optimizer, name)))


def _dense_gradients(optimizer):
    """Makes `optimizer.apply` sum an embedding's `tf.IndexedSlices` gradient into a dense
    one first, as PyTorch's `nn.Embedding` gradient is: Keras's Adam squares the slices
    before their duplicates add up (keras/src/optimizers/adam.py:125 `ops.square` of an
    IndexedSlices), so a class drawn twice in a batch gets `g1^2 + g2^2` in the second
    moment where PyTorch has `(g1 + g2)^2`."""
    import tensorflow as tf

    apply = optimizer.apply

    def dense_apply(gradients, variables=None):
        return apply([tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                      for g in gradients], variables)

    optimizer.apply = dense_apply


def _adjust(optimizers, lift, epsilon_zero):
    """With `lift`, float64 hyperparameters and dense embedding gradients
    (`_dense_gradients`); with `epsilon_zero` (True, or an epsilon), Adam's epsilon 0 (or
    that one, `EPSILON_ZERO`)."""
    for optimizer in optimizers:
        if lift:
            _float64_hyperparameters(optimizer)
            _dense_gradients(optimizer)
        if epsilon_zero is not False:
            optimizer.epsilon = 0.0 if epsilon_zero is True else float(epsilon_zero)


def ours_attack(row, arrays, lift=False, epsilon_zero=False):
    """Runs our attack of `row` for `arrays['steps']` steps; returns its latents per step.

    `lift` and `epsilon_zero` adjust the optimiser (`_adjust`); `lift` goes with
    `float32_casts_lifted`."""
    import keras

    from trapmid_tf.attacks import GMIAttack, KEDMIAttack, LOMMAAttack, PLGMIAttack
    from trapmid_tf.attacks.inversion import identity_labels, minimize

    networks = _keras_networks(arrays)
    steps = int(arrays["steps"])
    labels = identity_labels(arrays["classes"].tolist(), RESTARTS, CLASSES)
    common = dict(learning_rate=LEARNING_RATE, identity_weight=IDENTITY_WEIGHT)
    if row == "gmi":
        attack = GMIAttack(networks["G"], networks["D"], momentum=MOMENTUM, **common)
    elif row == "kedmi":
        attack = KEDMIAttack(networks["G"], networks["D"], **common)
    elif row == "plgmi":  # the fixed flip of `reference_plgmi`
        attack = PLGMIAttack(networks["G"], learning_rate=PLGMI_LR,
                             augment=lambda images, _: keras.ops.flip(images, axis=2))
    else:
        attack = LOMMAAttack("gmi", networks["G"], networks["D"], surrogates=[networks["S"]],
                             p_reg=arrays["p_reg"], reg_weight=LOMMA_REG, momentum=MOMENTUM,
                             **common).attack
    batch = IDENTITIES * RESTARTS
    if row == "kedmi":  # one eps per step, identity-major as our batch
        draws = [eps.reshape(batch, Z_DIM) for eps in arrays["eps"]]
    else:  # the initial latents
        draws = [arrays["z0"].reshape(batch, Z_DIM)]
    trajectory = []
    with injected_draws(keras.random, "normal", draws):
        problem = attack.build_problem(networks["T"], keras.ops.convert_to_tensor(labels),
                                       IDENTITIES, keras.random.SeedGenerator(0))
        _adjust([problem.optimizer], lift, epsilon_zero)
        for _ in range(steps):  # one traced step per call: each traces its injected eps
            minimize(problem.loss, problem.variables, problem.optimizer, 1)
            trajectory.append([np.array(v.numpy()) for v in problem.variables])

    def per_step(index):  # (steps, identities, restarts, z_dim), as the reference's runs
        return np.stack([t[index] for t in trajectory]).reshape(
            steps, IDENTITIES, RESTARTS, Z_DIM)

    if row == "kedmi":
        return {"mu": per_step(0), "log_var": per_step(1)}
    return {"z": per_step(0)}


def _run_reference(row, out, reference_python, reference_repo, **options):
    """Runs the reference worker on the row's saved inputs; returns its arrays."""
    inputs = os.path.join(out, f"{row}_inputs.npz")
    outputs = os.path.join(out, f"{row}_reference{'_' if options else ''}"
                           f"{'_'.join(f'{k}{v}' for k, v in options.items())}.npz")
    settings = {"repo": reference_repo, "row": row, "inputs": inputs, "outputs": outputs,
                **options}
    _speed.run([reference_python, os.path.abspath(__file__), WORKER_FLAG, json.dumps(settings)])
    return load_arrays(outputs)


@contextlib.contextmanager
def _plgmi_flip_only():
    """Makes our PLG-MI prior's augmentation (plgmi_prior.py `_augment`, its draws still
    taken) a horizontal flip of every image, as `reference_plgmi_prior`'s."""
    import keras

    from trapmid_tf.attacks import plgmi_prior

    augment = plgmi_prior._augment
    plgmi_prior._augment = lambda images, uniform, jitter_probability: keras.ops.flip(
        images, axis=2)
    try:
        yield
    finally:
        plgmi_prior._augment = augment


def _ours_plgmi_prior(networks, arrays):
    """Our `PLGMIPrior` (its default Adams) and the injected draws in the order it takes
    them: per critic step, a generator step's z, y and augmentation draws (unused: flip
    only) before every `N_CRITIC`-th, then the noise, z and y of the critic step."""
    import keras

    from trapmid_tf.attacks import PLGMIPrior

    prior = PLGMIPrior(networks["G"], networks["D"], networks["T"], n_dis=N_CRITIC,
                       inversion_weight=CGAN_ALPHA, seed=0)
    normal, randint, uniform = [], [], []
    for step in range(len(arrays["images"])):
        if step % N_CRITIC == 0:
            normal.append(arrays["generator_z"][step // N_CRITIC])
            randint.append(arrays["generator_y"][step // N_CRITIC])
            uniform.append(np.zeros((PRIOR_BATCH, 10)))
        # float32 (exact): the noise is added to the float32 images (plgmi_prior.py:446),
        # which a floatx draw, float64 here, could not be.
        uniform.append(arrays["noise"][step].astype(np.float32))
        normal.append(arrays["critic_z"][step])
        randint.append(arrays["critic_y"][step])
    draws = contextlib.ExitStack()
    for name, values in (("normal", normal), ("randint", randint), ("uniform", uniform)):
        draws.enter_context(injected_draws(keras.random, name, values))
    draws.enter_context(_plgmi_flip_only())
    batches = (arrays["images"].reshape(-1, SIDE, SIDE, 3), arrays["labels"].reshape(-1))
    return prior, batches, draws


def ours_prior(arrays, lift=False, epsilon_zero=False):
    """Trains our `GMIPrior`, `KEDMIPrior` or `PLGMIPrior` (their default Adams) on the
    row's batches, one discriminator step per batch, with the injected draws; returns how
    the steps changed both networks' weights, in PyTorch's layout."""
    import tensorflow as tf

    from trapmid_tf.attacks import GMIPrior, KEDMIPrior
    from trapmid_tf.attacks.priors import KEDMI_BATCH_KEYS

    networks = _keras_networks(arrays)
    if "D.emb.weight" in arrays:
        prior, batches, draws = _ours_plgmi_prior(networks, arrays)
        prior.compile(run_eagerly=True)
        _adjust([prior.generator_optimizer, prior.optimizer], lift, epsilon_zero)
        with draws:
            prior.fit(*batches, batch_size=PRIOR_BATCH, epochs=1, shuffle=False, verbose=0)
        return _weight_changes(networks, arrays)
    if "unlabeled" in arrays:
        prior = KEDMIPrior(networks["G"], networks["D"], networks["T"], n_critic=N_CRITIC,
                           entropy_weight=ENTROPY_WEIGHT, seed=0)
        batches = {key: arrays[key].reshape(-1, SIDE, SIDE, 3) for key in KEDMI_BATCH_KEYS}
    else:
        prior = GMIPrior(networks["G"], networks["D"], n_critic=N_CRITIC,
                         gradient_penalty_weight=PENALTY_WEIGHT, seed=0)
        batches = arrays["images"].reshape(-1, SIDE, SIDE, 3)
    prior.compile(run_eagerly=True)  # eager steps: every step takes its injected draws
    _adjust([prior.generator_optimizer, prior.optimizer], lift, epsilon_zero)
    with injected_draws(tf.random, "stateless_normal", arrays["normal"]), \
            injected_draws(tf.random, "stateless_uniform", arrays.get("uniform", [])):
        prior.fit(batches, batch_size=PRIOR_BATCH, epochs=1, shuffle=False, verbose=0)
    return _weight_changes(networks, arrays)


def _weight_changes(networks, arrays):
    """How G's and D's weights moved from `arrays`' values, in PyTorch's layout."""
    weights = {}
    for prefix, layer in networks["layers"].items():
        if prefix[0] in "GD":
            values = [np.asarray(w) for w in layer.get_weights()]
            if len(values) == 1:  # an embedding: the same layout
                weights[f"{prefix}.weight"] = values[0]
                continue
            kernel, bias = values
            weights[f"{prefix}.weight"] = (kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4
                                           else kernel.T)
            weights[f"{prefix}.bias"] = bias
    return {key: value - arrays[key] for key, value in weights.items()}


def _map_ir18(m):
    """The reference's `IR18` (classify.py:73-97: torchvision ResNet-18 under `feature.<i>`,
    `fc_layer`) onto the zoo's `ir18`, for `assign_torch_state_dict` (which has no "ir18")."""
    m.conv("stem_conv", "feature.0")
    m.batch_norm("stem_bn", "feature.1")
    for stage in range(1, 5):  # feature.4-7 = layer1-4
        for block in range(2):
            name, key = f"layer{stage}_block{block}", f"feature.{stage + 3}.{block}"
            for part in ("1", "2"):
                m.conv(f"{name}_conv{part}", f"{key}.conv{part}")
                m.batch_norm(f"{name}_bn{part}", f"{key}.bn{part}")
            if m.has(f"{name}_downsample"):
                m.conv(f"{name}_downsample", f"{key}.downsample.0")
                m.batch_norm(f"{name}_downsample_bn", f"{key}.downsample.1")
    m.dense("logits", "fc_layer")


def _training_network(setting, outputs, state_dict):
    """The zoo network of a training row, PyTorch's BatchNorm rule, weights from a state dict
    (`assign_torch_state_dict`, "ir18" registered here from `_map_ir18`)."""
    from trapmid_tf.models import ir18, torch_weights, vgg16_bn

    torch_weights.ARCHITECTURES.setdefault("ir18", _map_ir18)
    build = {"vgg16_bn": vgg16_bn, "ir18": ir18}[setting["network"]]
    side = setting["side"]
    network = build((side, side, 3), outputs, torch_running_variance=True)
    torch_weights.assign_torch_state_dict(network, state_dict, setting["network"])
    return network


def _state_dict(arrays, prefix):
    return {key[len(prefix) + 1:]: value for key, value in arrays.items()
            if key.startswith(prefix + ".")}


@contextlib.contextmanager
def _float64_bido_images():
    """Gives BiDO's kernels float64 images: `BiDOModel` casts its images to float32 (the data
    contract), whose kernel cannot meet the float64 hiddens' (bido.py:143 under a float64
    floatx); the images are float32 values, so the cast back is exact."""
    from keras import ops

    from trapmid_tf.defenses import bido

    terms = bido.bido_terms
    bido.bido_terms = lambda images, *args: terms(ops.cast(images, "float64"), *args)
    try:
        yield
    finally:
        bido.bido_terms = terms


def ours_training(row, arrays, reference, lift=False, epsilon=None):
    """Trains our `TrapMIDModel` (or, without trapdoors, the classifier's own `fit` step) on
    the row's batches from the reference's initial weights, with the same fixed flip; returns
    the probes' logits, the discriminator's and the triggers (NCHW) after every step, and the
    changes of every classifier variable (by path; but those of rounding size, see
    `ROUNDING_CHANGE`); and the reference's same arrays, its changes from its final state
    dict mapped into a copy of the network.

    `lift` makes the triggers (`BlendTrigger` computes in float32 by default) and the
    optimisers' hyperparameters float64 scalars (NegLS's smoothing, main and trapdoor, is in
    the loss's dtype, float64 here); `epsilon`, if given, replaces Adam's 1e-8."""
    import keras

    import trapmid_tf as tm
    from trapmid_tf.layers.triggers import BlendTrigger

    setting = TRAINING[row]
    classes, channels = setting["classes"], setting["trigger_channels"]
    classifier = _training_network(setting, classes, _state_dict(reference, "init.C"))
    initial = [np.array(v.numpy()) for v in classifier.variables]

    def optimizer():
        if setting["adam"]:
            return tm.TorchAdam(TRAINING_ADAM_LR, epsilon=1e-8)
        return tm.TorchSGD(TRAINING_SGD["lr"], momentum=TRAINING_SGD["momentum"],
                           weight_decay=TRAINING_SGD["weight_decay"])

    if setting["negls"] is None:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        epoch, epochs, schedule = setting["negls"]
        # loss.py:7-22: CelebA 50 / 75, MNIST 5 / 7 (start, full) epochs
        start, full = (50, 75) if schedule == "ls_scheduler" else (5, 7)
        loss = tm.defenses.NegLSLoss(NEGLS, epochs, start, full, epoch=epoch)
    if channels:
        discriminator = _training_network(setting, 1, _state_dict(reference, "init.D"))
        flip = keras.layers.Lambda(lambda x: keras.ops.flip(x, axis=2))
        model = tm.TrapMIDModel(classifier, classes, discriminator=discriminator, augment=flip,
                                trigger_channels=channels,
                                alpha=TRAPDOOR_SETTINGS["alpha"], beta=TRAPDOOR_SETTINGS["beta"],
                                trigger_step_size=TRAPDOOR_SETTINGS["step_size"])
        if lift:  # the same layer computing in float64
            model.trigger = BlendTrigger(classes, model.image_shape, model.alpha, channels,
                                         dtype="float64", name="trigger")
        model.triggers.assign(arrays["triggers"].transpose(0, 2, 3, 1))
        model.compile(optimizer=optimizer(), loss=loss, run_eagerly=True)
        optimizers = [model.optimizer, model.discriminator_optimizer]
    else:
        model = tm.defenses.BiDOModel(classifier) if setting.get("bido") else classifier
        model.compile(optimizer=optimizer(), loss=loss, run_eagerly=True, jit_compile=False)
        optimizers = [model.optimizer]
    _adjust(optimizers, lift, False)
    for optimizer in optimizers if epsilon is not None else ():
        optimizer.epsilon = epsilon
    results = {"logits": [], "realness": [], "triggers": []}
    with _float64_bido_images():
        for step in range(int(arrays["steps"])):
            images, labels = arrays["images"][step], arrays["labels"][step]
            if channels:
                model.train_on_batch(images, labels, arrays["trapdoor_labels"][step])
            else:  # BiDOModel refuses `train_on_batch`'s (x, y, None) (mid.py:253)
                model.fit(images, labels, batch_size=len(images), shuffle=False, verbose=0)
            results["logits"].append(np.asarray(classifier(arrays["probes"], training=False)))
            if channels:
                results["realness"].append(np.asarray(discriminator(arrays["probes"],
                                                                    training=False)))
                results["triggers"].append(np.asarray(model.triggers).transpose(0, 3, 1, 2))
    ours = {key: np.stack(value) for key, value in results.items() if value}
    theirs = {key: reference[key] for key in ours}
    mapped = _training_network(setting, classes, _state_dict(reference, "final.C"))
    changes = {variable.path: (np.asarray(variable) - start, np.asarray(mapped) - start)
               for variable, mapped, start in zip(classifier.variables, mapped.variables,
                                                  initial)}
    largest = max(np.max(np.abs(change)) for _, change in changes.values())
    for path, (change, reference_change) in changes.items():
        # A change below ROUNDING_CHANGE of the largest is rounding: a conv bias before a
        # BatchNorm (VGG16-BN's) has gradient 0, its reference change is ~1e-17.
        if np.max(np.abs(reference_change)) >= ROUNDING_CHANGE * largest:
            ours[path], theirs[path] = change, reference_change
    return ours, theirs


def _compare_training(row, out, reference_python, reference_repo, arrays, reference):
    """`compare_row` of a training row: as is, lifted and (Adam) with epsilon 0."""
    import keras

    result = {"steps": int(arrays["steps"])}
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    # The zoo's layers take the global dtype policy, which Keras fixes from floatx at its
    # first use (keras/src/dtype_policies/dtype_policy.py:577-583): both are set.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        ours, theirs = ours_training(row, arrays, reference)
        save_arrays(os.path.join(out, f"{row}_ours.npz"), ours)
        result["as_is"] = largest_difference(ours, theirs)
        with float32_casts_lifted():
            ours, theirs = ours_training(row, arrays, reference, lift=True)
            save_arrays(os.path.join(out, f"{row}_ours_lifted.npz"), ours)
            save_arrays(os.path.join(out, f"{row}_compared_reference.npz"), theirs)
            result["lifted"] = largest_difference(ours, theirs)
            if row in ADAM_ROWS:
                reference = _run_reference(row, out, reference_python, reference_repo,
                                           adam_epsilon=TRAINING_EPSILON_ZERO)
                result["lifted_epsilon_zero"] = largest_difference(*ours_training(
                    row, arrays, reference, lift=True, epsilon=TRAINING_EPSILON_ZERO))
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    return result


def compare_row(row, out, reference_python, reference_repo, seed, steps):
    """Writes the row's inputs, runs the reference worker and ours; returns the differences.

    Attack and prior rows report `as_is` (the library), `lifted` (float32 casts lifted) and,
    where Adam runs (`ADAM_ROWS`), `lifted_epsilon_zero` (both Adams with epsilon 0, which
    removes where each adds it).
    """
    import keras

    save_arrays(os.path.join(out, f"{row}_inputs.npz"), make_inputs(row, seed, steps))
    arrays = load_arrays(os.path.join(out, f"{row}_inputs.npz"))  # ours reads what it read
    reference = _run_reference(row, out, reference_python, reference_repo)
    if row in TRAINING_ROWS:
        return _compare_training(row, out, reference_python, reference_repo, arrays,
                                 reference)
    if row not in ATTACK_ROWS:
        ours = ours_metric(row, arrays)
        save_arrays(os.path.join(out, f"{row}_ours.npz"), ours)
        return {"steps": "-", "as_is": largest_difference(ours, reference),
                "reference_value": {key: value.tolist() for key, value in reference.items()}}
    def run_ours(**options):
        if row in PRIOR_ROWS:
            return ours_prior(arrays, **options)
        return ours_attack(row, arrays, **options)

    result = {"steps": steps}
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")  # the latent variables of our attacks are floatx
    try:
        ours = run_ours()
        save_arrays(os.path.join(out, f"{row}_ours.npz"), ours)
        result["as_is"] = largest_difference(ours, reference)
        with float32_casts_lifted():
            result["lifted"] = largest_difference(run_ours(lift=True), reference)
            if row in ADAM_ROWS:
                reference = _run_reference(row, out, reference_python, reference_repo,
                                           adam_epsilon=EPSILON_ZERO.get(row, 0.0))
                result["lifted_epsilon_zero"] = largest_difference(
                    run_ours(lift=True, epsilon_zero=EPSILON_ZERO.get(row, True)), reference)
    finally:
        keras.config.set_floatx(floatx)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(FLAGS.rows) - set(ROWS))
    if unknown:
        raise app.UsageError(f"--rows must be among {list(ROWS)}; received {unknown}.")
    for name in ("reference_python", "reference_repo", "out"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required.")
    for name in ("steps", "prior_steps", "training_steps"):
        if FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be >= 1; received {FLAGS[name].value}.")
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "flags.json"), "w") as file:
        json.dump({name: FLAGS[name].value for name in
                   ("rows", "reference_python", "reference_repo", "steps", "prior_steps",
                    "training_steps", "seed", "out")},
                  file, indent=1)
    results = {}
    for row in FLAGS.rows:
        steps = (FLAGS.prior_steps if row in PRIOR_ROWS
                 else FLAGS.training_steps if row in TRAINING_ROWS else FLAGS.steps)
        results[row] = compare_row(row, FLAGS.out, FLAGS.reference_python,
                                   FLAGS.reference_repo, FLAGS.seed, steps)
        print(f"{row}: {results[row]}", flush=True)
    with open(os.path.join(FLAGS.out, "results.json"), "w") as file:
        json.dump(results, file, indent=1)
    print(format_table(results))


if __name__ == "__main__":
    if WORKER_FLAG in sys.argv:
        print(json.dumps(reference_worker(json.loads(sys.argv[sys.argv.index(WORKER_FLAG) + 1]))))
    else:
        app.run(main)
