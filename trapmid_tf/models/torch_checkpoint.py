"""Reads PyTorch checkpoints (`torch.save` files) into numpy arrays, without PyTorch.

A `torch.save` file (PyTorch >= 1.6, the default format) is a zip archive holding
`<archive>/data.pkl`, a pickle of the saved object, and one raw little-endian byte string per
tensor storage, `<archive>/data/<key>`. The pickle names each storage by a persistent id
`("storage", <dtype class such as torch.FloatStorage>, key, location, numel)` and builds each
tensor with `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.

Unpickling can run any importable callable a file names, so this reader never imports what a
file asks for: `_RestrictedUnpickler.find_class` resolves an allow-list of the names a state
dict needs (an `OrderedDict`, the tensor and parameter rebuilders, the storage dtype classes)
to stand-ins of its own, and refuses every other name (`os.system`, ...) with a ValueError.
Tensors become numpy arrays of the storage's dtype (bfloat16 is widened to float32).

The older, non-zip format (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`) and
TorchScript archives are not supported; they are refused with a message saying so.
"""

import collections
import os
import pickle
import zipfile

import numpy as np

# Storage class names of `torch` (and `torch.cuda`, in files written from GPU tensors) and
# the little-endian numpy dtype of their elements.
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # widened to float32 when the tensor is rebuilt
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
# Keys of a checkpoint dict that may hold the state dict, in the order they are tried
# (`{'state_dict': ...}` in the KED-MI / GMI / Trap-MID files, `{'model': ..., 'opt': ...}`
# in PLG-MI's generator files).
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "G", "generator", "net")
DATA_PARALLEL_PREFIX = "module."


class _StorageType:
    """Stand-in for a `torch.<Name>Storage` class: the element dtype of a storage."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage read from the archive: a flat numpy array and its dtype class."""

    def __init__(self, storage_type, values):
        self.storage_type = storage_type
        self.values = values


class _Marker:
    """Stand-in for a class a tensor pickle names only to say what to rebuild (Tensor, ...)."""

    def __init__(self, name):
        self.name = name


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """`torch._utils._rebuild_tensor_v2`: a strided view of a storage, copied to an array."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"A tensor's storage must come from the archive; got {type(storage)}.")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    values, offset = storage.values, int(storage_offset)
    if len(size) != len(stride) or min(stride, default=0) < 0 or offset < 0:
        raise ValueError(f"Bad tensor layout: size {size}, stride {stride}, offset {offset}.")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= values.size:
            raise ValueError(
                f"A tensor of size {size}, stride {stride} and offset {offset} reads element "
                f"{last} of a storage of {values.size} elements: the file is corrupted."
            )
    itemsize = values.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        values[offset:] if values.size else values,
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    array = np.array(view)
    if storage.storage_type.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _rebuild_parameter(data, *unused):
    """`torch._utils._rebuild_parameter(_with_state)`: the parameter's data."""
    return data


def _rebuild_from_type(function, kind, arguments, state):
    """`torch._tensor._rebuild_from_type_v2` for plain tensors and parameters."""
    return function(*arguments)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _Marker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.parameter.Parameter"),
}
for _module in ("torch", "torch.cuda"):
    for _name in _STORAGE_DTYPES:
        _ALLOWED_GLOBALS[(_module, _name)] = _StorageType(_name)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl` with an allow-list of globals; storages come from the archive."""

    def __init__(self, file, archive, prefix, byteorder):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages = {}

    def find_class(self, module, name):
        """Resolves an allowed global to its stand-in; refuses any other.

        Args:
            module: Module name written in the pickle.
            name: Attribute name written in the pickle.

        Returns:
            The stand-in object of `module.name`.

        Raises:
            ValueError: If `module.name` is not on the allow-list.
        """
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(
                f"The checkpoint's pickle names the global {module}.{name}, which is not a "
                f"tensor or state-dict building block; it is refused (loading it could run "
                f"arbitrary code). Allowed: "
                f"{', '.join(sorted({f'{m}.{n}' for m, n in _ALLOWED_GLOBALS if m != 'torch.cuda'}))}."
            ) from None

    def persistent_load(self, pid):
        """Returns the storage a persistent id names, read once from the archive.

        Args:
            pid: `("storage", storage_type, key, location, numel)`.

        Returns:
            A `_Storage`.

        Raises:
            ValueError: On an unknown id or a storage whose size disagrees with `numel`.
        """
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"Unsupported persistent id in the checkpoint: {pid!r}.")
        _, storage_type, key, _, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"A storage's type must be a torch storage class; got {storage_type!r}.")
        if key not in self._storages:
            member = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(member)
            except KeyError:
                raise ValueError(f"The archive lacks the storage {member!r}.") from None
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) != int(numel) * dtype.itemsize:
                raise ValueError(
                    f"Storage {member!r} holds {len(raw)} bytes; {numel} elements of "
                    f"{dtype.itemsize} bytes were expected: the file is corrupted."
                )
            values = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
            self._storages[key] = _Storage(storage_type, values)
        return self._storages[key]


def read_torch_checkpoint(path):
    """Reads a `torch.save` file; tensors become numpy arrays. PyTorch is not needed.

    Only tensors, numbers, strings, lists, tuples, dicts and `OrderedDict`s are rebuilt (a
    state dict, an optimizer state, a dict of them); a file naming any other Python global is
    refused before anything it names is used.

    Args:
        path: A `.pth` / `.pt` / `.tar` file written by `torch.save` (zip format, the default
            since PyTorch 1.6).

    Returns:
        The saved object with every tensor as a numpy array.

    Raises:
        FileNotFoundError: If `path` is not a file.
        ValueError: If the file is not a readable zip-format `torch.save` archive, is
            corrupted, or names a global outside the allow-list.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch checkpoint {path!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a zip-format torch.save file (PyTorch >= 1.6). Files in the legacy "
            f"format can be rewritten with torch: torch.save(torch.load(old), new)."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1 or pickles[0].count("/") != 1:
                raise ValueError(
                    f"it must hold exactly one <archive>/data.pkl; found {pickles} "
                    f"(TorchScript archives are not state dicts)."
                )
            prefix = pickles[0][: -len("data.pkl")]
            names = set(archive.namelist())
            byteorder = "little"
            if f"{prefix}byteorder" in names:
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii").strip()
            with archive.open(pickles[0]) as data:
                return _RestrictedUnpickler(data, archive, prefix, byteorder).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"{path!r} is not a readable torch.save file: {error}") from None
    except ValueError as error:
        raise ValueError(f"Cannot read PyTorch checkpoint {path!r}: {error}") from None


def _is_state_dict(value):
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items())
    )


def state_dict_from_checkpoint(checkpoint, key=None):
    """Finds the state dict in a checkpoint and removes DataParallel's `module.` prefix.

    Args:
        checkpoint: What `read_torch_checkpoint` returned: a state dict, or a dict holding one.
        key: The entry holding the state dict, or None to take the checkpoint itself when it
            is a state dict, else the first of `STATE_DICT_KEYS` that holds one.

    Returns:
        A `{name: numpy array}` dict, with `module.` removed when every name starts with it.

    Raises:
        ValueError: If no state dict is found (the message lists the checkpoint's keys).
    """
    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else None
            raise ValueError(f"`key` {key!r} is not in the checkpoint; its keys are {found}.")
        state = checkpoint[key]
    elif _is_state_dict(checkpoint):
        state = checkpoint
    else:
        candidates = [k for k in STATE_DICT_KEYS if isinstance(checkpoint, dict) and k in checkpoint]
        state = checkpoint[candidates[0]] if candidates else None
    if not _is_state_dict(state):
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint)
        raise ValueError(
            f"The checkpoint holds no state dict (a dict of name -> tensor) "
            f"{'under ' + repr(key) if key is not None else 'at its top level or under ' + repr(STATE_DICT_KEYS)}; "
            f"it holds {found}. Pass `key` to name the entry."
        )
    if all(name.startswith(DATA_PARALLEL_PREFIX) for name in state):
        state = {name[len(DATA_PARALLEL_PREFIX) :]: value for name, value in state.items()}
    return dict(state)
