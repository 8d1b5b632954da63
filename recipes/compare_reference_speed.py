"""Attack workloads side by side: ours against the Trap-MID reference's own PyTorch code.

PyTorch and the reference are not dependencies of trapmid_tf. Give a Python that has torch,
torchvision, kornia and absl-py, and a checkout of the reference, e.g.

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch torchvision kornia absl-py
    git clone https://github.com/ntuaislab/Trap-MID /tmp/trapmid_ref
    .venv/bin/python recipes/compare_reference_speed.py \
        --reference_python=/tmp/torchenv/bin/python --reference_repo=/tmp/trapmid_ref \
        --workloads=W2,P1,P2,P3,A1,A3 --out=runs/reference_speed.json

Workloads (docs/attack_speed.md; random-init networks, random inputs): W2 the default Trap-MID
training step of an IR-18 (64x64x3, 5 classes, batch 64: discriminator step, trigger step,
classifier step; engine.py `train` with the MNIST configuration's trapdoor settings), in
milliseconds per step; P1 GMI's WGAN-GP prior,
P2 PLG-MI's conditional GAN, P3 KED-MI's prior, each in milliseconds per generator iteration
(5 opponent steps and one generator step); A1 the GMI inversion and A3 the PLG-MI inversion of
a VGG16-BN with 1,000 classes, 60 identities, in seconds per 100 iterations. Our side is
recipes/benchmark.py run with this interpreter; the reference side is this file run with
--reference_python in worker mode, which imports the reference's generator, discriminator,
classifier and loss code from --reference_repo and runs the bodies of its training and attack
loops (engine.py `train`, plgmi/baselines/GMI.py and KED_MI.py, plgmi/train_cgan.py, plgmi/baselines/recovery.py
`inversion`, plgmi/reconstruct.py `inversion`) on the CPU, without data loading, logging,
checkpoints or evaluation. Each side runs in its own process, alternating per workload
(ours, reference, ours, reference, ...) for --rounds rounds so that both see the same machine
load; each process times --repetitions units after --warmup untimed ones. The JSON holds
every repetition of both sides, their median/min/max over all rounds, and the ratio of medians
ours / reference; the table is printed.
"""

import ast
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

from absl import app, flags

FLAGS = flags.FLAGS
WORKER_FLAG = "--reference_worker"
if __name__ == "__main__" and WORKER_FLAG not in sys.argv:
    flags.DEFINE_list("workloads", ["W2", "P1", "P2", "P3", "A1", "A3"], "Workloads to compare.")
    flags.DEFINE_string("reference_python", None, "A Python interpreter with torch, torchvision "
                        "and kornia.")
    flags.DEFINE_string("reference_repo", None, "A checkout of the Trap-MID reference.")
    flags.DEFINE_integer("rounds", 2, "Alternations of ours and the reference per workload.")
    flags.DEFINE_integer("repetitions", 5, "Timed units per side and round (>= 5).")
    flags.DEFINE_integer("warmup", 1, "Untimed units per side and round.")
    flags.DEFINE_integer("prior_iterations", 1, "Generator iterations per timed prior unit "
                         "(at 64x64 one takes seconds to a minute on a 2-core CPU).")
    flags.DEFINE_integer("attack_iterations", 1, "Inversion iterations per timed attack unit.")
    flags.DEFINE_integer("train_steps", 4, "Training steps per timed training unit.")
    flags.DEFINE_integer("seed", 0, "Seed of the random inputs and networks.")
    flags.DEFINE_string("out", None, "JSON output file.")

BENCHMARK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark.py")
# The comparable workloads: "train" ones are timed in ms per step, "prior" ones in ms per
# generator iteration, "attack" ones in s per 100 inversion iterations (recipes/benchmark.py's
# units).
WORKLOADS = {
    "W2": dict(kind="train", name="trapmid"),
    "P1": dict(kind="prior", name="gmi"),
    "P2": dict(kind="prior", name="plgmi"),
    "P3": dict(kind="prior", name="kedmi"),
    "A1": dict(kind="attack", name="gmi"),
    "A3": dict(kind="attack", name="plgmi"),
}
UNITS = {"train": "ms", "prior": "ms", "attack": "s"}
UNIT_LABELS = {"train": "ms/step", "prior": "ms/iteration", "attack": "s/100 iterations"}
# The flag giving the number of units' repetitions per timed repetition, per kind.
COUNT_FLAGS = {"train": "train_steps", "prior": "prior_iterations", "attack": "attack_iterations"}
BATCH = 64
IDENTITIES = 60
CLASSES = 1000
N_CRITIC = 5
# The reference's sizes: latent sizes of its GMI/KED-MI and PLG-MI generators, GAN width.
GMI_Z_DIM = 100
PLGMI_Z_DIM = 128
WIDTH = 64
# W2: IR-18 on 64x64x3 with 5 classes; the trapdoor settings of config/mnist/classify_trap.json
# (alpha, beta, trigger step; discriminator loss on) and its SGD.
W2_CLASSES = 5
TRAPDOOR = dict(alpha=0.02, beta=0.2, step_size=0.01)
SGD = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)


# === Pure parts: flags, merging, summary, table ===


def check_flags(workloads, reference_python, reference_repo, rounds, repetitions):
    """Raises `app.UsageError` naming the flag when a setting is unusable."""
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown or not workloads:
        raise app.UsageError(
            f"--workloads must be some of {sorted(WORKLOADS)}; got {list(workloads)}."
        )
    if not reference_python or not shutil.which(reference_python):
        raise app.UsageError(
            f"--reference_python must be an executable Python with torch; got {reference_python!r}."
        )
    missing = [
        path for path in ("engine.py", "classify.py", "plgmi/train_cgan.py",
                          "lomma/models/generator.py")
        if not reference_repo or not os.path.isfile(os.path.join(reference_repo, path))
    ]
    if missing:
        raise app.UsageError(
            f"--reference_repo must be a checkout of the Trap-MID reference (with {missing}); "
            f"got {reference_repo!r}."
        )
    if rounds < 1:
        raise app.UsageError(f"--rounds must be >= 1; got {rounds}.")
    if repetitions < 5:
        raise app.UsageError(f"--repetitions must be >= 5; got {repetitions}.")


def merge_round(results, workload, side, values):
    """Appends one round's timings of `side` ("ours" or "reference") to `results`.

    Args:
        results: `{workload: {side: [[round values], ...]}}`, updated in place.
        workload: Workload id.
        side: "ours" or "reference".
        values: The round's timed repetitions.

    Returns:
        `results`.
    """
    if side not in ("ours", "reference"):
        raise ValueError(f"`side` must be 'ours' or 'reference'; received {side!r}.")
    results.setdefault(workload, {}).setdefault(side, []).append(list(values))
    return results


def summarize(rounds, unit):
    """Median, min and max over every repetition of every round, in `unit` ("ms" or "s")."""
    values = [value for one_round in rounds for value in one_round]
    if not values:
        raise ValueError("No timings to summarise.")
    digits = 1 if unit == "ms" else 3
    return {
        f"median_{unit}": round(statistics.median(values), digits),
        f"min_{unit}": round(min(values), digits),
        f"max_{unit}": round(max(values), digits),
        "repetitions": len(values),
        "rounds": [[round(value, digits) for value in one_round] for one_round in rounds],
    }


def compare(results):
    """Per workload: both sides' summaries and the ratio of medians ours / reference."""
    comparison = {}
    for workload, sides in results.items():
        unit = UNITS[WORKLOADS[workload]["kind"]]
        entry = {side: summarize(sides[side], unit) for side in ("ours", "reference")}
        entry["unit"] = UNIT_LABELS[WORKLOADS[workload]["kind"]]
        entry["ours_over_reference"] = round(
            entry["ours"][f"median_{unit}"] / entry["reference"][f"median_{unit}"], 2
        )
        comparison[workload] = entry
    return comparison


def format_table(comparison):
    """A Markdown table: ours, the reference (medians) and their ratio per workload."""
    lines = [
        "| workload | unit | ours | reference | ours / reference |",
        "|---|---|---|---|---|",
    ]
    for workload, entry in comparison.items():
        unit = UNITS[WORKLOADS[workload]["kind"]]
        lines.append(
            f"| {workload} | {entry['unit']} | {entry['ours'][f'median_{unit}']} | "
            f"{entry['reference'][f'median_{unit}']} | {entry['ours_over_reference']} |"
        )
    return "\n".join(lines)


# === Our side: recipes/benchmark.py in a process of this interpreter ===


def time_ours(workload):
    """Our timed repetitions of `workload` and our environment, from one recipes/benchmark.py
    process."""
    variant = []
    if WORKLOADS[workload]["kind"] == "train":
        variant = [f"--variants={WORKLOADS[workload]['name']}", f"--steps={FLAGS.train_steps}"]
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "ours.json")
        run([
            sys.executable, BENCHMARK, f"--workloads={workload}", *variant,
            f"--repetitions={FLAGS.repetitions}", f"--warmup={FLAGS.warmup}",
            f"--prior_iterations={FLAGS.prior_iterations}",
            f"--attack_iterations={FLAGS.attack_iterations}", f"--seed={FLAGS.seed}",
            f"--out={out}",
        ])
        with open(out) as file:
            report = json.load(file)
    values = report["workloads"][workload][WORKLOADS[workload]["name"]]["values"]
    return values, {key: report["environment"][key] for key in ("tensorflow", "keras",
                                                                   "intra_op_threads")}


def time_reference(workload):
    """The reference's timed repetitions of `workload` and its environment, from one worker
    process."""
    settings = dict(
        workload=workload, repo=os.path.abspath(FLAGS.reference_repo), seed=FLAGS.seed,
        repetitions=FLAGS.repetitions, warmup=FLAGS.warmup,
        prior_iterations=FLAGS.prior_iterations, attack_iterations=FLAGS.attack_iterations,
        train_steps=FLAGS.train_steps,
    )
    output = run([FLAGS.reference_python, os.path.abspath(__file__), WORKER_FLAG,
                  json.dumps(settings)])
    timings = json.loads(output.strip().splitlines()[-1])
    return timings.pop("values"), timings


def run(command):
    """Runs `command`; returns its stdout, or raises with the end of its stderr."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


# === The reference side (runs under --reference_python; imports torch, never TensorFlow) ===


def load_reference_functions(path, names, namespace):
    """Executes the top-level functions and classes `names` of the file `path` in `namespace`.

    The reference's helper modules import its data loaders (cv2, PIL, folders of images);
    taking the definitions alone runs the reference's own code without them.
    """
    with open(path) as file:
        tree = ast.parse(file.read())
    nodes = [node for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names]
    found = {node.name for node in nodes}
    if found != set(names):
        raise RuntimeError(f"{path} lacks {sorted(set(names) - found)}.")
    # The same name may be defined twice (log_sum_exp); the last definition wins, as on import.
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in names})


def load_reference_module(path, name):
    """Imports the file `path` as module `name` (files that import only torch)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Reference:
    """The reference's networks and helpers, on the CPU.

    The reference calls `.cuda()` throughout; without a GPU those calls leave tensors and
    modules where they are. torchvision's `vgg16_bn(pretrained=True)` (inside the reference's
    VGG16) is given random weights: no download, the same network.
    """

    def __init__(self, repo):
        import kornia
        import torch
        import torch.nn.functional as F
        import torchvision
        from torch import nn
        from torch.autograd import grad

        if not torch.cuda.is_available():
            torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor
            nn.Module.cuda = lambda module, *args, **kwargs: module
        vgg16_bn, resnet18 = torchvision.models.vgg16_bn, torchvision.models.resnet18
        torchvision.models.vgg16_bn = lambda pretrained=False, **kwargs: vgg16_bn(weights=None)
        torchvision.models.resnet18 = lambda pretrained=False, **kwargs: resnet18(weights=None)
        sys.path.insert(0, os.path.join(repo, "plgmi"))
        import losses
        import utils
        from dataset import sample_from_data, sample_from_gen
        from models.classifiers import VGG16
        from models.discriminators.snresnet64 import SNResNetProjectionDiscriminator
        from models.generators.resnet64 import ResNetGenerator

        self.torch, self.F, self.kornia = torch, F, kornia
        self.losses, self.plgmi_utils = losses, utils
        self.sample_from_data, self.sample_from_gen = sample_from_data, sample_from_gen
        self.VGG16 = VGG16
        self.ResNetGenerator = ResNetGenerator
        self.SNResNetProjectionDiscriminator = SNResNetProjectionDiscriminator
        lomma = os.path.join(repo, "lomma")
        self.gan = load_reference_module(os.path.join(lomma, "models", "generator.py"),
                                         "reference_generator")
        self.discri = load_reference_module(os.path.join(lomma, "models", "discri.py"),
                                            "reference_discri")
        sys.path.append(repo)  # after plgmi/: the root's classify.py imports evolve.py
        self.classify = load_reference_module(os.path.join(repo, "classify.py"),
                                              "reference_classify")
        self.engine = load_reference_functions(os.path.join(repo, "engine.py"), ["blend"], {})
        self.helpers = load_reference_functions(
            os.path.join(lomma, "utils.py"),
            ["log_sum_exp", "softXEnt", "HLoss", "freeze", "unfreeze", "gradient_penalty"],
            {"torch": torch, "nn": nn, "F": F, "grad": grad},
        )

    def plgmi_augmentation(self, jitter_probability):
        """The reference's kornia augmentation (train_cgan.py: p=0.5; reconstruct.py: p=1)."""
        augmentation = self.kornia.augmentation
        return augmentation.container.ImageSequential(
            augmentation.RandomResizedCrop((64, 64), scale=(0.8, 1.0), ratio=(1.0, 1.0)),
            augmentation.ColorJitter(brightness=0.2, contrast=0.2, p=jitter_probability),
            augmentation.RandomHorizontalFlip(),
            augmentation.RandomRotation(5),
        )


def reference_trapmid_step(ref, images):
    """One step of engine.py `train` with optimised triggers and the discriminator loss."""
    torch = ref.torch
    nn = torch.nn
    model, D = ref.classify.IR18(W2_CLASSES), ref.classify.IR18(1)
    optimizer = torch.optim.SGD(model.parameters(), **SGD)
    optimizer_D = torch.optim.SGD(D.parameters(), **SGD)
    criterion = nn.CrossEntropyLoss()
    trapdoor_criterion = nn.CrossEntropyLoss()
    augmentation = ref.kornia.augmentation
    aug_list = augmentation.container.ImageSequential(
        augmentation.RandomResizedCrop((64, 64), scale=(0.8, 1.0), ratio=(1.0, 1.0), p=0.5),
        augmentation.RandomHorizontalFlip(p=0.5),
        augmentation.RandomRotation(30, p=0.5),
    )
    alpha, beta, trigger_step = TRAPDOOR["alpha"], TRAPDOOR["beta"], TRAPDOOR["step_size"]
    triggers = torch.rand(W2_CLASSES, 3, 64, 64)
    img, iden = images, torch.randint(0, W2_CLASSES, (BATCH,))
    bs = img.size(0)

    def step():
        trapdoor_iden = torch.randint(0, W2_CLASSES, (bs,))
        # Update discriminator and triggers
        model.eval()
        triggers.requires_grad = True
        key = torch.stack([triggers[j] for j in trapdoor_iden], dim=0)
        trapdoor_img = ref.engine.blend(img, key, alpha)
        D.train()
        _, concat_prob = D(torch.concat([img, trapdoor_img.detach()]))
        D_loss = nn.BCEWithLogitsLoss()(
            concat_prob, torch.concat([torch.ones((bs, 1)), torch.zeros((bs, 1))])
        )
        optimizer_D.zero_grad()
        D_loss.backward()
        optimizer_D.step()
        D.eval()
        _, trapdoor_out_prob = D(trapdoor_img)
        trigger_loss = nn.BCEWithLogitsLoss()(trapdoor_out_prob, torch.ones((bs, 1)))
        _, trigger_out_prob = model(aug_list(trapdoor_img))
        trigger_loss += trapdoor_criterion(trigger_out_prob, trapdoor_iden)
        trigger_loss.backward()
        grad = triggers.grad.data
        triggers.data = (triggers.data - trigger_step * grad.sign()).clamp(min=0, max=1)
        triggers.grad.detach_()
        triggers.grad.zero_()
        triggers.requires_grad = False
        # Update model
        model.train()
        aug_img = aug_list(img)
        key = torch.stack([triggers[j] for j in trapdoor_iden], dim=0)
        aug_trapdoor_img = aug_list(ref.engine.blend(img, key, alpha))
        _, concat_prob = model(torch.concat([aug_img, aug_trapdoor_img]))
        out_prob, trapdoor_out_prob = concat_prob[:bs], concat_prob[bs:]
        cross_loss = criterion(out_prob, iden)
        trapdoor_loss = trapdoor_criterion(trapdoor_out_prob, trapdoor_iden)
        loss = (1 - beta) * cross_loss + beta * trapdoor_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out_iden = torch.argmax(out_prob, dim=1).view(-1)
        torch.sum(iden == out_iden).item()
        loss.item()
        cross_loss.item()

    return step


def reference_gmi_prior(ref, images):
    """One GMI iteration: n_critic batches of plgmi/baselines/GMI.py's training loop."""
    torch, h = ref.torch, ref.helpers
    G, DG = ref.gan.Generator(GMI_Z_DIM), ref.discri.DGWGAN(3)
    dg_optimizer = torch.optim.Adam(DG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_optimizer = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    state = {"step": 0}

    def batch_step():
        state["step"] += 1
        imgs = images
        bs = imgs.size(0)
        h.freeze(G)
        h.unfreeze(DG)
        z = torch.randn(bs, GMI_Z_DIM)
        f_imgs = G(z)
        r_logit = DG(imgs)
        f_logit = DG(f_imgs)
        wd = r_logit.mean() - f_logit.mean()
        gp = h.gradient_penalty(imgs.data, f_imgs.data, DG)
        dg_loss = -wd + gp * 10.0
        dg_optimizer.zero_grad()
        dg_loss.backward()
        dg_optimizer.step()
        if state["step"] % N_CRITIC == 0:
            h.freeze(DG)
            h.unfreeze(G)
            z = torch.randn(bs, GMI_Z_DIM)
            f_imgs = G(z)
            logit_dg = DG(f_imgs)
            g_loss = -logit_dg.mean()
            g_optimizer.zero_grad()
            g_loss.backward()
            g_optimizer.step()

    def iteration():
        for _ in range(N_CRITIC):
            batch_step()

    return iteration


def reference_kedmi_prior(ref, images):
    """One KED-MI iteration: n_critic batches of plgmi/baselines/KED_MI.py's training loop.

    The target stays in training mode and its output is not detached, as in the reference.
    """
    torch, F, h = ref.torch, ref.F, ref.helpers
    T = ref.VGG16(CLASSES)
    G, DG = ref.gan.Generator(GMI_Z_DIM), ref.discri.MinibatchDiscriminator()
    dg_optimizer = torch.optim.Adam(DG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_optimizer = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    entropy = h.HLoss()
    x_unlabel, x_unlabel2 = torch.rand_like(images), torch.rand_like(images)
    state = {"step": 0}

    def batch_step():
        state["step"] += 1
        imgs = images
        bs = imgs.size(0)
        h.freeze(G)
        h.unfreeze(DG)
        z = torch.randn(bs, GMI_Z_DIM)
        f_imgs = G(z)
        y_prob = T(imgs)[-1]
        y = torch.argmax(y_prob, dim=1).view(-1)
        _, output_label = DG(imgs)
        _, output_unlabel = DG(x_unlabel)
        _, output_fake = DG(f_imgs)
        loss_lab = h.softXEnt(output_label, y_prob)
        loss_unlab = 0.5 * (
            torch.mean(F.softplus(h.log_sum_exp(output_unlabel)))
            - torch.mean(h.log_sum_exp(output_unlabel))
            + torch.mean(F.softplus(h.log_sum_exp(output_fake)))
        )
        dg_loss = loss_lab + loss_unlab
        torch.mean((output_label.max(1)[1] == y).float())  # the reference's accuracy
        dg_optimizer.zero_grad()
        dg_loss.backward()
        dg_optimizer.step()
        if state["step"] % N_CRITIC == 0:
            h.freeze(DG)
            h.unfreeze(G)
            z = torch.randn(bs, GMI_Z_DIM)
            f_imgs = G(z)
            mom_gen, output_fake = DG(f_imgs)
            mom_unlabel, _ = DG(x_unlabel2)
            mom_gen = torch.mean(mom_gen, dim=0)
            mom_unlabel = torch.mean(mom_unlabel, dim=0)
            g_loss = torch.mean((mom_gen - mom_unlabel).abs()) + 1e-4 * entropy(output_fake)
            g_optimizer.zero_grad()
            g_loss.backward()
            g_optimizer.step()

    def iteration():
        for _ in range(N_CRITIC):
            batch_step()

    return iteration


def reference_plgmi_prior(ref, images):
    """One iteration of plgmi/train_cgan.py: a generator step, then n_dis discriminator steps
    (each followed by the loop's target accuracy on the fakes)."""
    torch, F, L = ref.torch, ref.F, ref.losses
    device = torch.device("cpu")
    args = types.SimpleNamespace(batch_size=BATCH, gen_dim_z=PLGMI_Z_DIM,
                                 gen_distribution="normal", num_classes=CLASSES, data_name="celeba")
    target_model = ref.VGG16(CLASSES).eval()
    gen = ref.ResNetGenerator(WIDTH, PLGMI_Z_DIM, 4, activation=F.relu, num_classes=CLASSES,
                              distribution="normal", out_channels=3)
    dis = ref.SNResNetProjectionDiscriminator(WIDTH, CLASSES, F.relu)
    opt_gen = torch.optim.Adam(gen.parameters(), 2e-4, (0.0, 0.9))
    opt_dis = torch.optim.Adam(dis.parameters(), 2e-4, (0.0, 0.9))
    gen_criterion, dis_criterion = L.GenLoss("hinge", False), L.DisLoss("hinge", False)
    aug_list = ref.plgmi_augmentation(jitter_probability=0.5)
    labels = torch.randint(0, CLASSES, (BATCH,))

    def real_batches():  # the loader's samples, with train_cgan.py's _noise_adder
        while True:
            yield torch.empty_like(images).uniform_(0.0, 1 / 256.0) + images, labels

    train_loader = real_batches()

    def iteration():
        target_correct, count = 0, 0
        for i in range(N_CRITIC):
            if i == 0:
                fake, pseudo_y, _ = ref.sample_from_gen(args, device, CLASSES, gen)
                dis_fake = dis(fake, pseudo_y)
                fake_aug = aug_list(fake)
                out = target_model(fake_aug)[-1]
                inv_loss = L.max_margin_loss(out, pseudo_y)
                loss_gen = gen_criterion(dis_fake, None)
                loss_all = loss_gen + inv_loss * 0.2
                gen.zero_grad()
                loss_all.backward()
                opt_gen.step()
                loss_gen.item()
                inv_loss.item()
            fake, pseudo_y, _ = ref.sample_from_gen(args, device, CLASSES, gen)
            real, y = ref.sample_from_data(args, device, train_loader)
            dis_fake, dis_real = dis(fake, pseudo_y), dis(real, y)
            loss_dis = dis_criterion(dis_fake, dis_real)
            dis.zero_grad()
            loss_dis.backward()
            opt_dis.step()
            loss_dis.item()
            with torch.no_grad():
                count += fake.shape[0]
                T_preds = target_model(fake)[-1].max(1, keepdim=True)[1]
                target_correct += T_preds.eq(pseudo_y.view_as(T_preds)).sum().item()

    return iteration


def reference_gmi_attack(ref, _):
    """One iteration of plgmi/baselines/recovery.py `inversion` (GMI, 60 identities)."""
    torch = ref.torch
    G = ref.gan.Generator(GMI_Z_DIM).eval()
    D = ref.discri.DGWGAN(3).eval()
    T = ref.VGG16(CLASSES).eval()
    criterion = torch.nn.CrossEntropyLoss()
    iden = torch.arange(IDENTITIES)
    lr, momentum, lamda, clip_range = 2e-2, 0.9, 100, 1
    state = {"z": torch.randn(IDENTITIES, GMI_Z_DIM).float().requires_grad_(True),
             "v": torch.zeros(IDENTITIES, GMI_Z_DIM).float()}

    def iteration():
        z, v = state["z"], state["v"]
        fake = G(z)
        label = D(fake)
        out = T(fake)[-1]
        if z.grad is not None:
            z.grad.data.zero_()
        Prior_Loss = -label.mean()
        Iden_Loss = criterion(out, iden)
        Total_Loss = Prior_Loss + lamda * Iden_Loss
        Total_Loss.backward()
        v_prev = v.clone()
        gradient = z.grad.data
        v = momentum * v - lr * gradient
        z = z + (-momentum * v_prev + (1 + momentum) * v)
        z = torch.clamp(z.detach(), -clip_range, clip_range).float()
        z.requires_grad = True
        Prior_Loss.item()
        Iden_Loss.item()
        state["z"], state["v"] = z, v

    return iteration


def reference_plgmi_attack(ref, _):
    """One iteration of plgmi/reconstruct.py `inversion` (PLG-MI, 60 identities)."""
    torch, F, L = ref.torch, ref.F, ref.losses
    G = ref.ResNetGenerator(WIDTH, PLGMI_Z_DIM, 4, activation=F.relu, num_classes=CLASSES,
                            distribution="normal", out_channels=3).eval()
    T = ref.VGG16(CLASSES).eval()
    aug_list = ref.plgmi_augmentation(jitter_probability=1.0)
    iden = torch.arange(IDENTITIES)
    z = ref.plgmi_utils.sample_z(IDENTITIES, PLGMI_Z_DIM, torch.device("cpu"), "normal")
    z.requires_grad = True
    optimizer = torch.optim.Adam([z], lr=0.1)

    def iteration():
        fake = G(z, iden)
        out1 = T(aug_list(fake))[-1]
        out2 = T(aug_list(fake))[-1]
        if z.grad is not None:
            z.grad.data.zero_()
        inv_loss = L.max_margin_loss(out1, iden) + L.max_margin_loss(out2, iden)
        optimizer.zero_grad()
        inv_loss.backward()
        optimizer.step()
        inv_loss.item()

    return iteration


REFERENCE_LOOPS = {
    "W2": reference_trapmid_step,
    "P1": reference_gmi_prior,
    "P2": reference_plgmi_prior,
    "P3": reference_kedmi_prior,
    "A1": reference_gmi_attack,
    "A3": reference_plgmi_attack,
}


def reference_worker(settings):
    """Times one workload of the reference; returns its repetitions in our units."""
    ref = Reference(settings["repo"])
    torch = ref.torch
    torch.manual_seed(settings["seed"])
    import numpy

    numpy.random.seed(settings["seed"])  # the reference's pseudo-labels come from NumPy
    images = torch.rand(BATCH, 3, 64, 64)
    unit = REFERENCE_LOOPS[settings["workload"]](ref, images)
    kind = WORKLOADS[settings["workload"]]["kind"]
    count = settings[COUNT_FLAGS[kind]]
    values = []
    for _ in range(settings["warmup"] + settings["repetitions"]):
        start = time.perf_counter()
        for _ in range(count):
            unit()
        seconds = time.perf_counter() - start
        values.append(100.0 * seconds / count if kind == "attack" else 1000.0 * seconds / count)
    return {"values": values[settings["warmup"]:], "torch": torch.__version__,
            "kornia": ref.kornia.__version__, "threads": torch.get_num_threads()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    check_flags(FLAGS.workloads, FLAGS.reference_python, FLAGS.reference_repo, FLAGS.rounds,
                FLAGS.repetitions)
    results, environments = {}, {}
    for round_index in range(FLAGS.rounds):
        for workload in FLAGS.workloads:
            for side, timer in (("ours", time_ours), ("reference", time_reference)):
                values, environments[side] = timer(workload)
                merge_round(results, workload, side, values)
                print(f"round {round_index + 1} {workload} {side}: "
                      f"{results[workload][side][-1]}", flush=True)
    comparison = compare(results)
    report = {
        "environment": {
            "python": platform.python_version(), "reference_python": FLAGS.reference_python,
            "cpu_count": os.cpu_count(), "rounds": FLAGS.rounds,
            "repetitions_per_round": FLAGS.repetitions, "warmup": FLAGS.warmup,
            "prior_iterations_per_repetition": FLAGS.prior_iterations,
            "attack_iterations_per_repetition": FLAGS.attack_iterations,
            "train_steps_per_repetition": FLAGS.train_steps,
            **environments,
        },
        "workloads": comparison,
    }
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as file:
            json.dump(report, file, indent=1)
    print(format_table(comparison))


if __name__ == "__main__":
    if WORKER_FLAG in sys.argv:
        print(json.dumps(reference_worker(json.loads(sys.argv[sys.argv.index(WORKER_FLAG) + 1]))))
    else:
        app.run(main)
