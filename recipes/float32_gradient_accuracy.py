"""How far float32 gradients of VGG16-BN sit from float64: ours (per variant) and PyTorch's.

One batch, one set of weights (PyTorch's VGG16 of the reference, seeded, initialised as the
zoo initialises: conv kernels Kaiming-normal fan-out, conv biases 0, BatchNorm 1 / 0, the
linear layer PyTorch's default), loaded into ours with `assign_torch_state_dict`. For each
trainable tensor the gradient of the mean cross-entropy (training mode: batch statistics) is
computed in float32 and compared with float64 by `max |g32 - g64| / max |g64|` and
`||g32 - g64|| / ||g64||`:

* torch: PyTorch float32 against PyTorch float64 (the module cast with `.double()`), run in
  a separate interpreter (--reference_python) that builds the reference's module from
  tests/models/fixtures/make_torch_fixtures.py;
* ours, each built by `vgg16_bn` and cloned with its layers swapped, against the same model
  in float64 with Keras's `Conv2D` and `BatchNormalization` (TensorFlow's fused batch norm
  has no float64 kernel): zoo (`FastGradConv2D` + `FusedBatchNorm`), keras_conv (`Conv2D` +
  `FusedBatchNorm`), keras_bn (`FastGradConv2D` + `BatchNormalization`), keras (both
  Keras's); each once with TF_ENABLE_ONEDNN_OPTS=1 and once with 0, in separate processes.

Our float64 gradients are checked against PyTorch's float64 ones (f64 check). Conv biases
are left out: each conv feeds a batch norm, so their exact gradient is 0 and what is left is
rounding. Each column also gets the forward error of every batch norm's output and its flips
(`decision_report`): ReLU inputs on the other side of 0 than in float64, and 2x2 max-pool
windows whose maximum sits at another position; a flip moves or drops a whole upstream
gradient entry. The control "float64 nudged" is our float64 model with every weight moved by
float32's unit roundoff: the gradients' sensitivity without flips.

`--timing_repetitions` also times one training step (SGD, `train_on_batch`) of the zoo and
keras_bn variants in float32 with oneDNN on, alternating in one process after a warm-up
step each (first seed only). Each seed's exchanged .npz files, and results.json with
flags.json, are written under --out.

    nice -n 19 .venv/bin/python recipes/float32_gradient_accuracy.py \
        --reference_python=/work/torchenv/bin/python --seeds=0,1,2,3,4 \
        --timing_repetitions=7 --out=runs/float32_gradients
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
WORKER_FLAG = "--gradient_worker"
HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_MODULES = os.path.join(HERE, "..", "tests", "models", "fixtures", "make_torch_fixtures.py")
VGG_WIDTHS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]
# Variants whose float32 training step --timing_repetitions times, alternating.
TIMED = ("zoo", "keras_bn")
# The float64 control: every weight moved by float32's unit roundoff, up or down at random.
NUDGE = 2.0**-24
# Variant name -> (conv layer, batch norm layer): "fast"/"fused" ours, "keras" Keras's.
VARIANTS = {
    "zoo": ("fast", "fused"),
    "keras_conv": ("keras", "fused"),
    "keras_bn": ("fast", "keras"),
    "keras": ("keras", "keras"),
}
if __name__ == "__main__" and WORKER_FLAG not in sys.argv:
    flags.DEFINE_string("reference_python", None, "A Python interpreter with torch.")
    flags.DEFINE_integer("side", 64, "Image side (a multiple of 32).")
    flags.DEFINE_integer("classes", 5, "Number of classes.")
    flags.DEFINE_integer("batch", 8, "Batch size.")
    flags.DEFINE_list("seeds", ["0"], "Seeds of the weights, images and labels, one run each.")
    flags.DEFINE_integer("timing_repetitions", 0,
                         "Timed training steps of the float32 zoo and keras_bn models, "
                         "alternating, on the first seed (0: no timing).")
    flags.DEFINE_string("out", None, "Folder for the exchanged .npz files and results.json.")


def _sibling(name):
    """Imports the recipe `name` of this folder (recipes are not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_compare = _sibling("compare_reference")  # its max-based relative difference


def relative_errors(approximate, exact):
    """`(max |a - e| / max |e|, ||a - e|| / ||e||)` of two float arrays, as Python floats."""
    approximate, exact = np.asarray(approximate, np.float64), np.asarray(exact, np.float64)
    return (_compare.relative_difference(approximate, exact),
            float(np.linalg.norm(approximate - exact) / np.linalg.norm(exact)))


def conv_names():
    """Our names of VGG16's convs in order, and the set of those followed by a max pool."""
    names, pooled, block, conv = [], set(), 1, 1
    for item in VGG_WIDTHS:
        if item == "M":
            pooled.add(names[-1])
            block, conv = block + 1, 1
        else:
            names.append(f"block{block}_conv{conv}")
            conv += 1
    return names, pooled


def decision_report(normalized32, normalized64):
    """Forward error and flipped decisions of the batch norms' outputs (ReLU inputs), NHWC.

    Args:
        normalized32, normalized64: `{conv name: batch-norm output}` in float32 and float64.

    Returns:
        `{name: {"error": max-based relative error, "relu_flips": entries whose sign (> 0)
        differs, "pool_flips": 2x2 windows after the ReLU whose positive maximum sits at
        another position (convs followed by a pool only)}}`.
    """
    _, pooled = conv_names()
    report = {}
    for name, exact in normalized64.items():
        approximate = normalized32[name]
        entry = {"error": relative_errors(approximate, exact)[0],
                 "relu_flips": int(np.sum((approximate > 0) != (exact > 0)))}
        if name in pooled:
            n, h, w, c = exact.shape
            windows = [np.maximum(a, 0).reshape(n, h // 2, 2, w // 2, 2, c)
                       .transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
                       for a in (approximate, exact)]
            positive = (windows[0].max(1) > 0) & (windows[1].max(1) > 0)
            moved = np.argmax(windows[0], 1) != np.argmax(windows[1], 1)
            entry["pool_flips"] = int(np.sum(positive & moved))
        report[name] = entry
    return report


def run(command, env=None):
    """Runs `command`; returns its last stdout line as JSON, or raises with its stderr's end."""
    result = subprocess.run(command, capture_output=True, text=True,
                            env=None if env is None else {**os.environ, **env})
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# === PyTorch side (runs under --reference_python; never imports TensorFlow) ===


def torch_worker(settings):
    """Builds the reference VGG16, writes its weights and float32 / float64 gradients."""
    import copy

    import torch
    import torch.nn.functional as F

    spec = importlib.util.spec_from_file_location("make_torch_fixtures", TORCH_MODULES)
    modules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modules)
    torch.manual_seed(settings["seed"])
    feature = 512 * (settings["side"] // 32) ** 2
    model = modules.VGG16(VGG_WIDTHS, feature, settings["classes"]).train()
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d):  # the zoo's conv initialisation
            torch.nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(layer.bias)
    weights = {key: value.numpy().copy() for key, value in model.state_dict().items()}
    inputs = np.load(settings["inputs"])
    arrays, normalized = {f"weight/{key}": value for key, value in weights.items()}, {}
    for dtype, network in (("float32", model), ("float64", copy.deepcopy(model).double())):
        normalized[dtype] = {}
        norms = [m for m in network.feature if isinstance(m, torch.nn.BatchNorm2d)]
        for name, norm in zip(conv_names()[0], norms):
            norm.register_forward_hook(
                lambda module, args, output, name=name, values=normalized[dtype]:
                values.__setitem__(name, output.detach().numpy().transpose(0, 2, 3, 1)))
        images = torch.from_numpy(inputs["images"].transpose(0, 3, 1, 2)).to(network.bn.weight)
        loss = F.cross_entropy(network(images)[1], torch.from_numpy(inputs["labels"]).long())
        network.zero_grad()
        loss.backward()
        for key, parameter in network.named_parameters():
            if parameter.grad is not None:
                arrays[f"{dtype}/{key}"] = parameter.grad.numpy().copy()
    np.savez(settings["out"], **arrays)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "decisions": decision_report(normalized["float32"], normalized["float64"])}


# === Our side (runs with TF_ENABLE_ONEDNN_OPTS set; never imports torch) ===


def keras_worker(settings):
    """Gradient errors of every variant against our float64 model, and of PyTorch's."""
    import time

    import keras
    import tensorflow as tf

    from trapmid_tf.layers.fast_grad_conv import FastGradConv2D, _onednn_kernels_on
    from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm
    from trapmid_tf.models.torch_weights import assign_torch_state_dict
    from trapmid_tf.models.vgg import vgg16_bn

    inputs, torch_arrays = np.load(settings["inputs"]), np.load(settings["torch"])
    images, labels = inputs["images"], inputs["labels"].astype(np.int32)
    weights = {key[len("weight/"):]: torch_arrays[key] for key in torch_arrays
               if key.startswith("weight/")}
    base = vgg16_bn(images.shape[1:], settings["classes"])
    assign_torch_state_dict(base, weights, "vgg16_bn")

    def variant(conv, batch_norm, dtype):
        def clone(layer):
            config = {**layer.get_config(), "dtype": dtype}
            if isinstance(layer, FastGradConv2D) and conv == "keras":
                return keras.layers.Conv2D.from_config(config)
            if isinstance(layer, FusedBatchNorm) and batch_norm == "keras":
                config.pop("torch_running_variance")
                return keras.layers.BatchNormalization.from_config(config)
            return layer.__class__.from_config(config)

        model = keras.models.clone_model(
            base, input_tensors=keras.Input(images.shape[1:], dtype=dtype), clone_function=clone
        )
        model.set_weights(base.get_weights())
        return model

    def gradients(model):
        """The gradients (as a training step computes them) and the batch norms' outputs."""
        @tf.function
        def compute(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            return tape.gradient(loss, model.trainable_variables)

        x = tf.constant(images, model.dtype)
        values = compute(x, tf.constant(labels))
        names = conv_names()[0]
        normalizing = keras.Model(model.inputs, [model.get_layer(f"{n}_bn").output for n in names])
        normalized = tf.function(lambda x: normalizing(x, training=True))(x)
        return ({v.path: g.numpy() for v, g in zip(model.trainable_variables, values)},
                {n: value.numpy() for n, value in zip(names, normalized)})

    def torch_gradients(dtype):
        """PyTorch's gradients in our layout (assigned through the checkpoint mapping)."""
        holder = variant("keras", "keras", "float64")
        state = {**weights, "bn.bias": np.zeros_like(weights["bn.bias"])}
        state.update({key[len(dtype) + 1:]: torch_arrays[key] for key in torch_arrays
                      if key.startswith(f"{dtype}/")})
        assign_torch_state_dict(holder, state, "vgg16_bn")
        return {v.path: v.numpy() for v in holder.trainable_variables}

    exact, exact_normalized = gradients(variant("keras", "keras", "float64"))
    compared = [name for name in exact if not (name.endswith("/bias") and "_conv" in name)]
    torch64 = torch_gradients("float64")
    results = {
        "onednn": bool(_onednn_kernels_on()),
        "tensors": compared,
        "f64_check": max(relative_errors(exact[n], torch64[n])[0] for n in compared),
        "errors": {},
        "decisions": {},
    }
    if settings["torch_row"]:
        torch32 = torch_gradients("float32")
        results["errors"]["torch"] = {n: relative_errors(torch32[n], torch64[n])
                                      for n in compared}
        nudged = variant("keras", "keras", "float64")
        signs = np.random.default_rng(settings["seed"])
        for v in nudged.trainable_variables:
            v.assign(v * (1.0 + NUDGE * signs.choice([-1.0, 1.0], v.shape)))
        nudged_gradients, nudged_normalized = gradients(nudged)
        results["errors"]["float64 nudged"] = {
            n: relative_errors(nudged_gradients[n], exact[n]) for n in compared}
        results["decisions"]["float64 nudged"] = decision_report(nudged_normalized,
                                                                 exact_normalized)
    for name, (conv, batch_norm) in VARIANTS.items():
        approximate, normalized = gradients(variant(conv, batch_norm, "float32"))
        results["errors"][name] = {n: relative_errors(approximate[n], exact[n])
                                   for n in compared}
        results["decisions"][name] = decision_report(normalized, exact_normalized)
    if settings["timing_repetitions"]:
        timed = {name: variant(*VARIANTS[name], "float32") for name in TIMED}
        for model in timed.values():
            model.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.train_on_batch(images, labels)  # warm-up: traces the step
        results["step_ms"] = {name: [] for name in timed}
        for _ in range(settings["timing_repetitions"]):
            for name, model in timed.items():
                start = time.perf_counter()
                model.train_on_batch(images, labels)
                results["step_ms"][name].append(1000.0 * (time.perf_counter() - start))
    return results


# === Driver ===


def group_of(name):
    """The table row a tensor belongs to: a conv kernel by name, or its kind."""
    layer, variable = name.split("/")
    if variable == "kernel" and "_conv" in layer:
        return layer
    if layer.endswith("_bn"):
        return f"conv BN {variable} (max of 13)" if "_conv" in layer else f"feature BN {variable}"
    return f"{layer} {variable}"


def format_table(columns):
    """Markdown: a row per conv kernel / tensor kind, `max-based / norm-based` per column."""
    first = next(iter(columns.values()))
    rows = list(dict.fromkeys(group_of(name) for name in first))
    lines = ["| tensor | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = []
        for errors in columns.values():
            members = [value for name, value in errors.items() if group_of(name) == row]
            cells.append(f"{max(m[0] for m in members):.1e} / {max(m[1] for m in members):.1e}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_decisions(columns):
    """Markdown: per conv, `forward error, ReLU flips / pool flips` of each column."""
    names = conv_names()[0]
    lines = ["| batch norm output of | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name in names:
        cells = [f"{c[name]['error']:.1e}, {c[name]['relu_flips']} / "
                 f"{c[name].get('pool_flips', '-')}" for c in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"{sum(e['relu_flips'] for e in c.values())} / "
              f"{sum(e.get('pool_flips', 0) for e in c.values())}" for c in columns.values()]
    lines.append("| flips in all (ReLU / pool) | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def measure(seed, out, timing_repetitions):
    """Runs both sides on one seed's weights and batch; returns results, columns, decisions."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {name: os.path.join(out, f"{name}.npz") for name in ("inputs", "torch")}
    np.savez(paths["inputs"],
             images=rng.random((FLAGS.batch, FLAGS.side, FLAGS.side, 3), dtype=np.float32),
             labels=rng.integers(0, FLAGS.classes, FLAGS.batch))
    common = {"seed": seed, "side": FLAGS.side, "classes": FLAGS.classes, **paths}
    torch_side = run([FLAGS.reference_python, os.path.abspath(__file__), WORKER_FLAG,
                      json.dumps({**common, "worker": "torch", "out": paths["torch"]})])
    results = {"torch": torch_side}
    for onednn in ("1", "0"):
        settings = {**common, "worker": "keras", "torch_row": onednn == "1",
                    "timing_repetitions": timing_repetitions if onednn == "1" else 0}
        results[f"onednn_{onednn}"] = run(
            [sys.executable, os.path.abspath(__file__), WORKER_FLAG, json.dumps(settings)],
            env={"TF_ENABLE_ONEDNN_OPTS": onednn},
        )
    columns, decisions = {}, {"torch": torch_side["decisions"]}
    for onednn in ("1", "0"):
        for kind, table in (("errors", columns), ("decisions", decisions)):
            for name, values in results[f"onednn_{onednn}"][kind].items():
                table[name if onednn == "1" and name in ("torch", "float64 nudged")
                      else f"{name} oneDNN {onednn}"] = values
    return results, columns, decisions


def format_seeds(per_seed):
    """Markdown: per seed, the largest norm-based conv-kernel error and the flips, per column."""
    names = list(next(iter(per_seed.values()))[0])
    lines = ["| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for seed, (columns, decisions) in per_seed.items():
        cells = []
        for name in names:
            kernels = [v[1] for t, v in columns[name].items()
                       if t.endswith("/kernel") and "_conv" in t]
            flips = (sum(e["relu_flips"] for e in decisions[name].values()),
                     sum(e.get("pool_flips", 0) for e in decisions[name].values()))
            cells.append(f"{max(kernels):.1e} ({flips[0]}/{flips[1]})")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.reference_python or not FLAGS.out:
        raise app.UsageError("--reference_python and --out are required.")
    if FLAGS.side % 32 or FLAGS.side < 32:
        raise app.UsageError(f"--side must be a multiple of 32; received {FLAGS.side}.")
    seeds = [int(seed) for seed in FLAGS.seeds]
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "flags.json"), "w") as file:
        json.dump(FLAGS.flag_values_dict(), file, indent=1, default=str)
    everything, per_seed = {}, {}
    for index, seed in enumerate(seeds):
        results, columns, decisions = measure(
            seed, os.path.join(FLAGS.out, f"seed{seed}"),
            FLAGS.timing_repetitions if index == 0 else 0)
        everything[seed], per_seed[seed] = results, (columns, decisions)
        print(f"seed {seed}: gradients, max-based / norm-based relative error against float64")
        print(format_table(columns))
        print(f"seed {seed}: batch norm outputs, forward error, ReLU flips / pool flips")
        print(format_decisions(decisions))
        print("f64 check (ours float64 vs PyTorch float64, max-based): "
              + ", ".join(f"oneDNN {o}: {results[f'onednn_{o}']['f64_check']:.1e}" for o in "10"),
              flush=True)
    with open(os.path.join(FLAGS.out, "results.json"), "w") as file:
        json.dump(everything, file, indent=1)
    print("largest norm-based conv-kernel error (ReLU flips / pool flips), per seed")
    print(format_seeds(per_seed))
    for name, step in everything[seeds[0]]["onednn_1"].get("step_ms", {}).items():
        print(f"{name} float32 training step, oneDNN on: median {np.median(step):.0f} ms "
              f"(min {min(step):.0f}, max {max(step):.0f}) over {len(step)}")


if __name__ == "__main__":
    if WORKER_FLAG in sys.argv:
        worker_settings = json.loads(sys.argv[sys.argv.index(WORKER_FLAG) + 1])
        worker = torch_worker if worker_settings["worker"] == "torch" else keras_worker
        print(json.dumps(worker(worker_settings)))
    else:
        app.run(main)
