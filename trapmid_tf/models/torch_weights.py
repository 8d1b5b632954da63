"""Maps the reference's PyTorch state dicts onto the zoo's Keras models.

Each supported architecture names, for every Keras variable, the state-dict key of the
reference's PyTorch module that holds it and how to lay the tensor out for Keras:

* conv `(out, in, kh, kw)` and conv-transpose `(in, out, kh, kw)` -> `(kh, kw, in|out, out|in)`;
* linear `(out, in)` -> `(in, out)`; a linear fed by a flattened `(C, H, W)` map gets its
  input rows permuted to Keras's `(H, W, C)` flatten order, one feeding a `(C, 4, 4)` reshape
  gets its outputs permuted likewise (with its bias and the BatchNorm1d after it);
* BatchNorm `weight, bias, running_mean, running_var` -> `gamma, beta, moving_mean,
  moving_variance` (`num_batches_tracked` has no Keras counterpart and is ignored);
* PReLU `(C,)` -> `(1, 1, C)`; class embeddings `(classes, C)` unchanged.

Architectures (reference module -> zoo builder), keys as `state_dict()` names them, after
DataParallel's `module.` prefix is removed:

* "vgg16_bn": Trap-MID / KED-MI `VGG16` (`feature.<i>`, `bn`, `fc_layer`) -> `vgg16_bn`
  (whose 2048-d feature is the reference's in HWC instead of CHW order; the logits agree);
* "facenet64", "ir152": `FaceNet64`, `IR152` (`feature.input_layer`, `feature.body.<i>`,
  `output_layer`, `fc_layer`) -> `facenet64`, `ir152`;
* "facenet_eval": the evaluation `FaceNet` (head under `feature.output_layer`) -> `facenet_eval`;
* "dcgan_generator": GMI / KED-MI `Generator` (`l1`, `l2_5`) -> `dcgan_generator`;
* "resnet_generator": PLG-MI `ResNetGenerator` (`l1`, `block2..5`, `b6`, `conv6`) ->
  `resnet_generator` (ours maps tanh to [0, 1]: outputs are `(reference + 1) / 2`).

Discriminators (and hence spectral-norm `weight_orig` / `weight_u` / `weight_v` tensors) are
not mapped.
"""

import dataclasses
from typing import Callable

import numpy as np

from trapmid_tf.models.torch_checkpoint import read_torch_checkpoint, state_dict_from_checkpoint
from trapmid_tf.validation import check_model

_IGNORED_SUFFIX = ".num_batches_tracked"


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One state-dict tensor: its key, the Keras variable it fills and how.

    `variable` None means the tensor has no Keras counterpart and must be all zeros (VGG16's
    BatchNorm1d bias, frozen at 0). `to_keras` turns the PyTorch array into the Keras layout;
    `torch_shape` is the PyTorch shape the variable's shape implies.
    """

    key: str
    variable: object
    torch_shape: tuple
    to_keras: Callable


def _identity(key, variable):
    return _Entry(key, variable, tuple(variable.shape), lambda a: a)


def _kernel(key, variable):
    """Conv `(O, I, kh, kw)` / conv-transpose `(I, O, kh, kw)` -> Keras `(kh, kw, ., .)`."""
    kh, kw, a, b = variable.shape
    return _Entry(key, variable, (b, a, kh, kw), lambda w: np.transpose(w, (2, 3, 1, 0)))


def _dense(key, variable):
    rows, columns = variable.shape
    return _Entry(key, variable, (columns, rows), np.transpose)


def _prelu(key, variable):
    channels = variable.shape[-1]
    return _Entry(key, variable, (channels,), lambda a: a.reshape(variable.shape))


def _chw_vector(key, variable, hwc):
    """A vector indexed like a flattened `(C, H, W)` map -> Keras's `(H, W, C)` order."""
    h, w, c = hwc
    return _Entry(
        key, variable, tuple(variable.shape),
        lambda v: v.reshape(c, h, w).transpose(1, 2, 0).reshape(-1),
    )


def _dense_from_chw(key, variable, hwc):
    """Linear `(out, C*H*W)` fed by a CHW flatten -> Keras `(H*W*C, out)` fed by an HWC one."""
    h, w, c = hwc
    outputs = variable.shape[1]
    return _Entry(
        key, variable, (outputs, variable.shape[0]),
        lambda a: a.reshape(outputs, c, h, w).transpose(2, 3, 1, 0).reshape(-1, outputs),
    )


def _dense_to_chw(key, variable, hwc):
    """Linear `(C*H*W, in)` feeding a `(C, H, W)` view -> Keras `(in, H*W*C)` for `(H, W, C)`."""
    h, w, c = hwc
    inputs = variable.shape[0]
    return _Entry(
        key, variable, (variable.shape[1], inputs),
        lambda a: a.reshape(c, h, w, inputs).transpose(3, 1, 2, 0).reshape(inputs, -1),
    )


def _zeros(key, length):
    return _Entry(key, None, (length,), lambda a: a)


class _Mapper:
    """Collects the entries of one model; `layer` checks the model has each named layer."""

    def __init__(self, model, architecture):
        self.model = model
        self.architecture = architecture
        self.names = {layer.name for layer in model.layers}
        self.entries = []
        self.optional = set()

    def has(self, name):
        return name in self.names

    def layer(self, name):
        if name not in self.names:
            raise ValueError(
                f"`model` {self.model.name!r} has no layer {name!r}, so it is not a zoo "
                f"{self.architecture!r} model; build it with the matching trapmid_tf.models "
                f"builder."
            )
        return self.model.get_layer(name)

    def conv(self, name, key):
        layer = self.layer(name)
        self.entries.append(_kernel(f"{key}.weight", layer.kernel))
        if layer.use_bias:
            self.entries.append(_identity(f"{key}.bias", layer.bias))

    def dense(self, name, key):
        layer = self.layer(name)
        self.entries.append(_dense(f"{key}.weight", layer.kernel))
        if layer.use_bias:
            self.entries.append(_identity(f"{key}.bias", layer.bias))

    def batch_norm(self, name, key, vector=_identity):
        layer = self.layer(name)
        pairs = [("weight", layer.gamma), ("bias", layer.beta)]
        pairs += [("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)]
        for suffix, variable in pairs:
            if variable is not None:
                self.entries.append(vector(f"{key}.{suffix}", variable))
        self.optional.add(key + _IGNORED_SUFFIX)

    def prelu(self, name, key):
        self.entries.append(_prelu(f"{key}.weight", self.layer(name).alpha))

    def spatial(self, name, output=False):
        """`(H, W, C)` of the named layer's input (or output) map."""
        layer = self.layer(name)
        return tuple(int(d) for d in (layer.output if output else layer.input).shape[1:])


def _map_vgg16_bn(m):
    index = 0
    block = 1
    while m.has(f"block{block}_conv1"):
        conv = 1
        while m.has(f"block{block}_conv{conv}"):
            m.conv(f"block{block}_conv{conv}", f"feature.{index}")
            m.batch_norm(f"block{block}_conv{conv}_bn", f"feature.{index + 1}")
            index += 3  # conv, BN, ReLU
            conv += 1
        index += 1  # max pool
        block += 1
    hwc = m.spatial("flatten")
    feature_bn = m.layer("feature_bn")
    m.batch_norm("feature_bn", "bn", vector=lambda key, v: _chw_vector(key, v, hwc))
    m.entries.append(_zeros("bn.bias", feature_bn.moving_mean.shape[0]))
    logits = m.layer("logits")  # its input rows follow the feature's CHW -> HWC order
    m.entries += [
        _dense_from_chw("fc_layer.weight", logits.kernel, hwc),
        _identity("fc_layer.bias", logits.bias),
    ]


def _map_ir(m, head):
    m.conv("stem_conv", "feature.input_layer.0")
    m.batch_norm("stem_bn", "feature.input_layer.1")
    m.prelu("stem_prelu", "feature.input_layer.2")
    index, stage = 0, 1
    while m.has(f"stage{stage}_unit0_conv1"):
        unit = 0
        while m.has(f"stage{stage}_unit{unit}_conv1"):
            name, key = f"stage{stage}_unit{unit}", f"feature.body.{index}"
            if m.has(f"{name}_shortcut_conv"):
                m.conv(f"{name}_shortcut_conv", f"{key}.shortcut_layer.0")
                m.batch_norm(f"{name}_shortcut_bn", f"{key}.shortcut_layer.1")
            m.batch_norm(f"{name}_bn1", f"{key}.res_layer.0")
            m.conv(f"{name}_conv1", f"{key}.res_layer.1")
            m.prelu(f"{name}_prelu", f"{key}.res_layer.2")
            m.conv(f"{name}_conv2", f"{key}.res_layer.3")
            m.batch_norm(f"{name}_bn2", f"{key}.res_layer.4")
            index, unit = index + 1, unit + 1
        stage += 1
    m.batch_norm("head_bn2d", f"{head}.0")
    hwc = m.spatial("head_flatten")
    kernel, bias = m.layer("head_dense").kernel, m.layer("head_dense").bias
    m.entries += [_dense_from_chw(f"{head}.3.weight", kernel, hwc), _identity(f"{head}.3.bias", bias)]
    m.batch_norm("feature_bn", f"{head}.4")
    m.dense("logits", "fc_layer")


def _map_dcgan_generator(m):
    hwc = m.spatial("reshape", output=True)
    m.entries.append(_dense_to_chw("l1.0.weight", m.layer("project").kernel, hwc))
    m.batch_norm("project_bn", "l1.1", vector=lambda key, v: _chw_vector(key, v, hwc))
    stages = 1
    while m.has(f"up{stages + 1}"):
        stages += 1
    for stage in range(1, stages):
        m.conv(f"up{stage}", f"l2_5.{stage - 1}.0")
        m.batch_norm(f"up{stage}_bn", f"l2_5.{stage - 1}.1")
    m.conv(f"up{stages}", f"l2_5.{stages - 1}")


def _map_conditional_batch_norm(m, name, key):
    layer = m.layer(name)
    m.entries += [
        _identity(f"{key}.running_mean", layer.batch_norm.moving_mean),
        _identity(f"{key}.running_var", layer.batch_norm.moving_variance),
        _identity(f"{key}.weights.weight", layer.gamma),
        _identity(f"{key}.biases.weight", layer.beta),
    ]
    m.optional.add(key + _IGNORED_SUFFIX)


def _map_resnet_generator(m):
    hwc = m.spatial("reshape", output=True)
    linear = m.layer("linear")
    m.entries += [
        _dense_to_chw("l1.weight", linear.kernel, hwc),
        _chw_vector("l1.bias", linear.bias, hwc),
    ]
    block = 1
    while m.has(f"block{block}_conv1"):
        name, key = f"block{block}", f"block{block + 1}"
        m.conv(f"{name}_shortcut_conv", f"{key}.c_sc")
        m.conv(f"{name}_conv1", f"{key}.c1")
        m.conv(f"{name}_conv2", f"{key}.c2")
        _map_conditional_batch_norm(m, f"{name}_cbn1", f"{key}.b1")
        _map_conditional_batch_norm(m, f"{name}_cbn2", f"{key}.b2")
        block += 1
    m.batch_norm("final_bn", "b6")
    m.conv("to_image", "conv6")


ARCHITECTURES = {
    "vgg16_bn": _map_vgg16_bn,
    "facenet64": lambda m: _map_ir(m, "output_layer"),
    "ir152": lambda m: _map_ir(m, "output_layer"),
    "facenet_eval": lambda m: _map_ir(m, "feature.output_layer"),
    "dcgan_generator": _map_dcgan_generator,
    "resnet_generator": _map_resnet_generator,
}


def _mapper(model, architecture):
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"`architecture` must be one of {sorted(ARCHITECTURES)}; received {architecture!r}."
        )
    check_model("model", model)
    mapper = _Mapper(model, architecture)
    ARCHITECTURES[architecture](mapper)
    return mapper


def torch_state_dict_shapes(model, architecture):
    """The PyTorch state dict that `load_torch_weights` expects for `model`.

    Args:
        model: A zoo model built for `architecture` (any size its builder allows).
        architecture: One of `ARCHITECTURES` (see the module docstring).

    Returns:
        `{key: shape}` of every tensor the reference module's `state_dict()` holds for this
        model (without `module.` prefixes and BatchNorm `num_batches_tracked` counters).

    Raises:
        ValueError: On an unknown `architecture` or a model that is not of it.
    """
    return {entry.key: entry.torch_shape for entry in _mapper(model, architecture).entries}


def assign_torch_state_dict(model, state_dict, architecture):
    """Copies a PyTorch state dict (numpy arrays) into a zoo model, all or nothing.

    Args:
        model: A zoo model built for `architecture`.
        state_dict: `{key: numpy array}` as `state_dict_from_checkpoint` returns it.
        architecture: One of `ARCHITECTURES`.

    Raises:
        ValueError: Naming every unknown key, missing key and shape mismatch (key, expected
            and received shape) at once, and any non-zero tensor that must be zero; nothing
            is assigned then.
    """
    mapper = _mapper(model, architecture)
    expected = {entry.key: entry for entry in mapper.entries}
    unknown = sorted(set(state_dict) - set(expected) - mapper.optional)
    missing = sorted(set(expected) - set(state_dict))
    problems = [f"unknown key {key!r}, shape {tuple(state_dict[key].shape)}" for key in unknown]
    problems += [f"missing key {key!r}, expected shape {expected[key].torch_shape}" for key in missing]
    converted = []
    for key, entry in expected.items():
        if key not in state_dict:
            continue
        array = np.asarray(state_dict[key])
        if tuple(array.shape) != entry.torch_shape:
            problems.append(
                f"shape mismatch at {key!r}: expected {entry.torch_shape}, received "
                f"{tuple(array.shape)}"
            )
        elif not np.issubdtype(array.dtype, np.number):
            problems.append(f"{key!r} holds {array.dtype} values; numbers were expected")
        elif entry.variable is None:
            if np.any(array != 0):
                problems.append(f"{key!r} must be all zeros (the Keras layer has no such term)")
        else:
            converted.append((entry.variable, entry.to_keras(array)))
    if problems:
        raise ValueError(
            f"The state dict does not fit {architecture!r} model {model.name!r} "
            f"({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  "
            + "\n  ".join(problems)
        )
    for variable, value in converted:
        variable.assign(value.astype(variable.dtype))


def load_torch_weights(model, path, architecture, key=None):
    """Loads a PyTorch checkpoint of the reference's architecture into a zoo model.

    Reads the file without PyTorch (`read_torch_checkpoint`), finds the state dict (at the top
    level or under 'state_dict', 'model', ...; DataParallel's `module.` prefix removed), and
    copies every tensor into the Keras layout. Example, KED-MI's evaluation model:
    `model = facenet_eval((64, 64, 3), 1000)` then
    `load_torch_weights(model, "FaceNet_95.88.tar", "facenet_eval")`.

    BatchNorm running statistics are copied as stored, so inference is the reference's under
    any build. How further training updates them is the model's choice, made when it is
    built: to fine-tune as PyTorch does, build it with `torch_running_variance=True`
    (`FusedBatchNorm`); this function leaves the layers as they are.

    Args:
        model: A zoo model built for `architecture` with the checkpoint's sizes (classes,
            input side, widths).
        path: The `torch.save` file (`.pth`, `.pt`, `.tar`; zip format).
        architecture: "vgg16_bn", "facenet64", "ir152", "facenet_eval", "dcgan_generator" or
            "resnet_generator" (see the module docstring for the reference modules).
        key: The checkpoint entry holding the state dict, or None to find it.

    Returns:
        `model`, with the checkpoint's weights.

    Raises:
        FileNotFoundError: If `path` is not a file.
        ValueError: If the file cannot be read safely, or its state dict does not fit `model`
            (every unknown key, missing key and shape mismatch is named in one error).
    """
    state_dict = state_dict_from_checkpoint(read_torch_checkpoint(path), key)
    assign_torch_state_dict(model, state_dict, architecture)
    return model
