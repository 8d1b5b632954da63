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
  `KEDMIPrior.fit`, compared as gmi_prior.

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
the algorithms themselves do. The rows that use Adam (KED-MI, the prior) run once more with
both sides' epsilon at 0, which removes the one place where Keras's and PyTorch's Adam
differ. The JSON (`results.json`, with `flags.json`) and the printed Markdown table give
every column; the exchanged .npz files stay in --out.
"""

import contextlib
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
WORKER_FLAG = "--reference_worker"
ROWS = ("knn", "fid", "topn", "gmi", "kedmi", "lomma", "gmi_prior", "kedmi_prior")
PRIOR_ROWS = ("gmi_prior", "kedmi_prior")
ATTACK_ROWS = ("gmi", "kedmi", "lomma", *PRIOR_ROWS)
ADAM_ROWS = ("kedmi", *PRIOR_ROWS)
if __name__ == "__main__" and WORKER_FLAG not in sys.argv:
    flags.DEFINE_list("rows", list(ROWS), "Rows to compare.")
    flags.DEFINE_string("reference_python", None, "A Python interpreter with torch.")
    flags.DEFINE_string("reference_repo", None, "A checkout of the Trap-MID reference.")
    flags.DEFINE_integer("steps", 5, "Optimisation steps per attack row.")
    flags.DEFINE_integer("prior_steps", 10,
                         "Discriminator steps of the prior rows (a generator step every 5th).")
    flags.DEFINE_integer("seed", 0, "Seed of the networks, inputs and draws.")
    flags.DEFINE_string("out", None, "Folder for the exchanged .npz files and results.json.")

# Network sizes: z_dim, image side, generator channels, conv channels, feature size, classes.
Z_DIM, SIDE, GEN_CHANNELS, CHANNELS, HIDDEN, CLASSES = 5, 6, 2, 4, 8, 4
IDENTITIES, RESTARTS = 3, 2  # 3 identities: batch weights 1/3 are not exact in float32
LEARNING_RATE, MOMENTUM, IDENTITY_WEIGHT, LOMMA_REG = 0.02, 0.9, 100.0, 1.0
# GMI prior (plgmi/baselines/config/celeba.json: lr 2e-4, n_critic 5; GMI.py: betas, penalty 10).
PRIOR_BATCH, PRIOR_LR, PRIOR_BETAS, N_CRITIC, PENALTY_WEIGHT = 4, 2e-4, (0.5, 0.999), 5, 10.0
ENTROPY_WEIGHT = 1e-4  # KED_MI.py:193


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
    arrays = {
        "steps": np.asarray(steps),
        "classes": rng.permutation(CLASSES)[:IDENTITIES],
        "G.l1.weight": _float32_exact(rng, GEN_CHANNELS * SIDE * SIDE, Z_DIM, scale=0.5),
        "G.l1.bias": _float32_exact(rng, GEN_CHANNELS * SIDE * SIDE, scale=0.1),
        "G.conv.weight": _float32_exact(rng, 3, GEN_CHANNELS, 3, 3, scale=0.4),
        "G.conv.bias": _float32_exact(rng, 3, scale=0.1),
        **_classifier_arrays(rng, "T", CLASSES, hidden=True),
    }
    if row in PRIOR_ROWS:  # batches, and the draws in the order both sides take them
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
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(Z_DIM, GEN_CHANNELS * SIDE * SIDE)
            self.conv = nn.Conv2d(GEN_CHANNELS, 3, 3, padding=1)

        def forward(self, z):
            x = torch.tanh(self.l1(z).view(-1, GEN_CHANNELS, SIDE, SIDE))
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

    def build(module, prefix):
        state = {key[len(prefix) + 1:]: torch.from_numpy(value)
                 for key, value in arrays.items() if key.startswith(prefix + ".")}
        module.load_state_dict(state)
        return module.double().eval()

    networks = {"T": build(Classifier(CLASSES, True), "T")}
    if "G.l1.weight" in arrays:
        networks["G"] = build(Generator(), "G")
        critic = arrays["D.out.weight"].shape[0] == 1
        discriminator = Critic(1, False) if critic else Classifier(CLASSES, False)
        networks["D"] = build(discriminator, "D")
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


REFERENCE_ROWS = {
    "knn": reference_knn,
    "fid": reference_fid,
    "topn": reference_topn,
    "gmi": reference_gmi,
    "kedmi": reference_kedmi,
    "lomma": lambda torch, helpers, arrays: reference_gmi(torch, helpers, arrays, lomma=True),
    "gmi_prior": reference_gmi_prior,
    "kedmi_prior": reference_kedmi_prior,
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
        x = keras.layers.Reshape((GEN_CHANNELS, SIDE, SIDE), dtype="float64")(x)
        x = tanh(keras.layers.Permute((2, 3, 1), dtype="float64")(x))
        images = keras.layers.Activation("sigmoid", dtype="float64")(conv("G.conv", 3, x))
        networks["G"] = keras.Model(z, images)

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
    if "D.out.weight" in arrays:
        networks["D"] = classifier("D", arrays["D.out.weight"].shape[0], False)
    return networks


@contextlib.contextmanager
def injected_draws(module, name, draws):
    """Makes the random op `module.name` (shape first) return the arrays of `draws` in turn.

    Each draw is returned as float64, reshaped to the requested shape (of the same size).

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
        return keras.ops.convert_to_tensor(draw.reshape(shape), "float64")

    setattr(module, name, take)
    try:
        yield
    finally:
        setattr(module, name, original)
    if queue:
        raise RuntimeError(f"{len(queue)} injected draws were not taken.")


@contextlib.contextmanager
def float32_casts_lifted():
    """Leaves float64 tensors float64 where our attacks cast or convert to float32, and gives
    the identity batch weights unrounded (their float32 values are 1 / batch size rounded)."""
    import keras
    from keras import ops

    from trapmid_tf.attacks import inversion

    cast, convert, weights = ops.cast, ops.convert_to_tensor, inversion.reference_batch_weights

    def lifted_cast(x, dtype):
        # The scalar loss cast of inversion.py `minimize` stays: its gradient is exact, and
        # its while_loop holds a float32 loss.
        float64 = keras.backend.standardize_dtype(x.dtype) == "float64"
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

    ops.cast, ops.convert_to_tensor = lifted_cast, lifted_convert
    inversion.reference_batch_weights = exact_weights
    try:
        yield
    finally:
        ops.cast, ops.convert_to_tensor = cast, convert
        inversion.reference_batch_weights = weights


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


def _adjust(optimizers, lift, epsilon_zero):
    """With `lift`, float64 hyperparameters; with `epsilon_zero`, Adam's epsilon 0."""
    for optimizer in optimizers:
        if lift:
            _float64_hyperparameters(optimizer)
        if epsilon_zero:
            optimizer.epsilon = 0.0


def ours_attack(row, arrays, lift=False, epsilon_zero=False):
    """Runs our attack of `row` for `arrays['steps']` steps; returns its latents per step.

    `lift` and `epsilon_zero` adjust the optimiser (`_adjust`); `lift` goes with
    `float32_casts_lifted`."""
    import keras

    from trapmid_tf.attacks import GMIAttack, KEDMIAttack, LOMMAAttack
    from trapmid_tf.attacks.inversion import identity_labels, minimize

    networks = _keras_networks(arrays)
    steps = int(arrays["steps"])
    labels = identity_labels(arrays["classes"].tolist(), RESTARTS, CLASSES)
    common = dict(learning_rate=LEARNING_RATE, identity_weight=IDENTITY_WEIGHT)
    if row == "gmi":
        attack = GMIAttack(networks["G"], networks["D"], momentum=MOMENTUM, **common)
    elif row == "kedmi":
        attack = KEDMIAttack(networks["G"], networks["D"], **common)
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


def ours_prior(arrays, lift=False, epsilon_zero=False):
    """Trains our `GMIPrior` or `KEDMIPrior` (their default Adams) on the row's batches, one
    discriminator step per batch, with the injected draws; returns how the steps changed both
    networks' weights, in PyTorch's layout."""
    import tensorflow as tf

    from trapmid_tf.attacks import GMIPrior, KEDMIPrior
    from trapmid_tf.attacks.priors import KEDMI_BATCH_KEYS

    networks = _keras_networks(arrays)
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
    weights = {}
    for prefix, layer in networks["layers"].items():
        if prefix[0] in "GD":
            kernel, bias = (np.asarray(w) for w in layer.get_weights())
            weights[f"{prefix}.weight"] = (kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4
                                           else kernel.T)
            weights[f"{prefix}.bias"] = bias
    return {key: value - arrays[key] for key, value in weights.items()}


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
                                           adam_epsilon=0.0)
                result["lifted_epsilon_zero"] = largest_difference(
                    run_ours(lift=True, epsilon_zero=True), reference)
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
    for name in ("steps", "prior_steps"):
        if FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be >= 1; received {FLAGS[name].value}.")
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "flags.json"), "w") as file:
        json.dump({name: FLAGS[name].value for name in
                   ("rows", "reference_python", "reference_repo", "steps", "prior_steps", "seed",
                    "out")},
                  file, indent=1)
    results = {}
    for row in FLAGS.rows:
        steps = FLAGS.prior_steps if row in PRIOR_ROWS else FLAGS.steps
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
