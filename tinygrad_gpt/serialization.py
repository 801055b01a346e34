"""`save` and `load`, torch-shaped (`torch.save(model.state_dict(), path)`), with no pickle written and none run.

What `save` writes: one safetensors file. Each array of the tree gets a name (a flat dict of tensors, e.g. a state
dict: exactly its keys; nested: the path, "model.lm_head.weight", "hist.0"), so any safetensors reader opens it.
The tree itself (dicts, OrderedDicts, lists, tuples, None/bool/int/float/str, numpy scalars) goes as JSON into the
safetensors metadata under TREE_KEY, each array a placeholder naming its entry. Anything else is a TypeError
naming where in the tree it sits. A path is written atomically (a temporary file beside it, fsync, rename).

What `load` reads, told apart by the first bytes:
  safetensors        ours (the tree comes back), or anyone's ({name: Tensor} in file order; BF16 -> float32)
  torch.save's zip   (torch >= 1.6): <name>/data.pkl, a pickle of the tree, whose tensors point by persistent id to
                     raw storages <name>/data/<key>. The pickle is read by _TensorUnpickler, which maps the few
                     globals a dict of tensors needs (ALLOWED_GLOBALS) onto functions here that cut NumPy arrays
                     out of the storage bytes, checked against their bounds. Any other global (os.system, eval,
                     a model's class ...) is refused before anything runs: UnsafeFileError.
  anything else      refused unread: a plain pickle (loading one can run any code), torch's legacy non-zip format
                     (a stream of pickles; re-save it with torch >= 1.6's default), unknown formats.
Every problem is one SerializationError line (a ValueError; UnsafeFileError is one too), naming the file.

Dimension names: none; arrays keep whatever shape they had.
"""
import collections
import io
import json
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from .errors import SerializationError, UnsafeFileError
from .fileio import replace_file
from .tensor import Tensor

TREE_KEY = "tinygrad_gpt.tree"           # the safetensors metadata entry that holds the tree
TREE_VERSION = 1


# ---- dtypes --------------------------------------------------------------------------------------------------------
class _Dtype:
    """An element type of a stored array: its NumPy dtype (None: unsupported here) and whether it is bfloat16,
    stored as 2-byte integers and widened to float32 on reading (NumPy has no bfloat16)."""

    def __init__(self, name, numpy_dtype, bfloat16=False):
        self.name, self.bfloat16 = name, bfloat16
        self.np = None if numpy_dtype is None else np.dtype(np.uint16 if bfloat16 else numpy_dtype)

    def __repr__(self):
        return self.name


_NUMPY_KINDS = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "int8": np.int8,
                "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16,
                "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64,
                "complex128": np.complex128}

# safetensors' dtype names; the F8_* and others are refused with a clear message
_ST_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16", "I32": "int32",
              "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
              "C64": "complex64"}

# torch's typed-storage classes (what torch.save pickles as the dtype of a _rebuild_tensor_v2 storage)
_TORCH_STORAGES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                   "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
                   "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
                   "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128"}
# torch dtypes named in a _rebuild_tensor_v3 call (the dtypes torch stores in an untyped storage: uint16/32/64, and
# float8/bits types, which NumPy cannot hold)
_TORCH_DTYPES = {name: name for name in _NUMPY_KINDS} | {"bfloat16": "bfloat16", "half": "float16",
                                                          "float": "float32", "double": "float64", "long": "int64"}
_TORCH_UNSUPPORTED = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
                      "float4_e2m1fn_x2", "complex32", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2")


def _dtype(name):
    if name == "bfloat16":
        return _Dtype(name, np.float32, bfloat16=True)
    return _Dtype(name, _NUMPY_KINDS.get(name))


def _to_native(raw, dtype):
    """A stored array (raw elements, any byte order) -> a writable NumPy array in native byte order;
    bfloat16 -> float32 exactly (its 16 bits are the high half of a float32)."""
    if dtype.bfloat16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(raw.dtype.newbyteorder("="), copy=True)


# ---- save ----------------------------------------------------------------------------------------------------------
def save(obj, f):
    """Write `obj` (a Tensor, a NumPy array, or a tree of dict / OrderedDict / list / tuple holding them and None,
    bool, int, float, str) to `f`, a path (written atomically) or a writable binary file, as one safetensors file.
    Raises TypeError naming the place in the tree of anything else."""
    arrays, used = {}, set()
    root = _encode(obj, (), arrays, used, set(), flat=_is_flat_dict(obj))
    meta = {TREE_KEY: json.dumps({"version": TREE_VERSION, "root": root}, allow_nan=False)}
    data = st_save(arrays, metadata=meta)
    if isinstance(f, (str, os.PathLike)):
        replace_file(Path(f), data)
    elif hasattr(f, "write"):
        f.write(data)
    else:
        raise TypeError(f"save: f must be a path or a writable binary file, not {type(f).__name__}")


def _is_flat_dict(obj):
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, (Tensor, np.ndarray))
                                         for k, v in obj.items())


def _where(path):
    return "obj" + "".join(f"[{p!r}]" for p in path)


def _encode(x, path, arrays, used, active, flat):
    """The JSON of `x` at `path`; its arrays are added to `arrays` under fresh names."""
    if x is None or isinstance(x, (bool, int, str)) and not isinstance(x, np.generic):
        return x
    if isinstance(x, np.str_):
        return str(x)
    if isinstance(x, float) and not isinstance(x, np.generic):      # (np.float64 is a float: kept as NumPy's)
        return x if math.isfinite(x) else {"float": repr(float(x))}           # "nan", "inf", "-inf"
    if isinstance(x, (Tensor, np.ndarray, np.generic)):
        if isinstance(x, Tensor):
            kind, a = "tensor", np.asarray(x.numpy())
        else:
            kind, a = ("array", x) if isinstance(x, np.ndarray) else ("scalar", np.asarray(x))
        if a.dtype.name not in _NUMPY_KINDS or a.dtype.name == "complex128":
            raise TypeError(f"cannot save {_where(path)}: arrays of dtype {a.dtype} are not supported "
                            f"(supported: {', '.join(k for k in _NUMPY_KINDS if k != 'complex128')})")
        name = _fresh_name(path, used, flat)
        arrays[name] = a if a.flags.c_contiguous else a.copy(order="C")    # safetensors reads the raw buffer
        node = {kind: name}
        if kind == "tensor" and x.requires_grad:
            node["requires_grad"] = True
        return node
    tag = ("odict" if isinstance(x, collections.OrderedDict) else "dict") if isinstance(x, dict) else \
        "list" if isinstance(x, list) else "tuple" if isinstance(x, tuple) else None
    if tag is None:
        raise TypeError(f"cannot save {_where(path)}: a {type(x).__module__}.{type(x).__qualname__} is not a "
                        "Tensor, NumPy array, dict, list, tuple or plain value (None, bool, int, float, str)")
    if id(x) in active:
        raise TypeError(f"cannot save {_where(path)}: the tree contains itself there (a cycle)")
    active.add(id(x))
    if tag in ("dict", "odict"):
        body = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise TypeError(f"cannot save {_where(path)}: dict keys must be strings, got "
                                f"{type(k).__name__} {k!r}")
            body[k] = _encode(v, path + (k,), arrays, used, active, flat)
    else:
        body = [_encode(v, path + (i,), arrays, used, active, flat) for i, v in enumerate(x)]
    active.discard(id(x))
    return {tag: body}


def _fresh_name(path, used, flat):
    """The array's name in the file: a flat dict's key, else the dotted path ("tensor" at the root); a name
    already taken (or safetensors' reserved "__metadata__") gets a "#n" suffix."""
    base = path[0] if flat else ".".join(str(p) for p in path) or "tensor"
    name, n = base, 1
    while name in used or name == "__metadata__":
        name, n = f"{base}#{n}", n + 1
    used.add(name)
    return name


# ---- load ----------------------------------------------------------------------------------------------------------
def load(f, map_location=None, weights_only=None, mmap=None):
    """Read what `save` or torch.save wrote from `f`, a path or a readable binary file. Tensors come back as Tensors
    on `map_location` (None: cpu); torch Parameters with requires_grad=True. weights_only and mmap are accepted for
    torch's signature and ignored: loading is always weights-only. Raises SerializationError (UnsafeFileError for
    a file that asks to run code), FileNotFoundError for a missing path."""
    if isinstance(f, (str, os.PathLike)):
        label = os.fspath(f)
        data = Path(f).read_bytes()
    elif hasattr(f, "read"):
        label = str(getattr(f, "name", "the file"))
        data = f.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("load: open the file in binary mode ('rb')")
    else:
        raise TypeError(f"load: f must be a path or a readable binary file, not {type(f).__name__}")
    if isinstance(map_location, dict) or (callable(map_location) and not isinstance(map_location, str)):
        raise TypeError("load: map_location must be None or a device ('cpu', 'cuda'); a dict or function of "
                        "locations is not supported")
    device = "cpu" if map_location is None else map_location
    data = bytes(data)
    kind = _sniff(data)
    if kind == "safetensors":
        return _load_safetensors(data, label, device)
    if kind == "zip":
        return _load_torch_zip(data, label, device)
    if kind == "empty":
        raise SerializationError(f"cannot load {label}: the file is empty")
    if kind == "legacy":
        raise SerializationError(f"cannot load {label}: it is in torch's legacy format (torch.save before torch 1.6, "
                                 "or _use_new_zipfile_serialization=False), a stream of pickles that is not read "
                                 "here: re-save it with a current torch.save or as safetensors")
    if kind == "pickle":
        raise UnsafeFileError(f"refusing to load {label}: it is a plain Python pickle, which can run any code when "
                              "loaded; only safetensors files and torch.save's zip files are read")
    raise SerializationError(f"cannot load {label}: it is neither a safetensors file nor a torch.save zip file")


# torch's legacy format opens with a pickle of this number (torch.serialization.MAGIC_NUMBER)
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _sniff(data):
    if not data:
        return "empty"
    if len(data) >= 10:
        n = struct.unpack("<Q", data[:8])[0]
        if 2 <= n <= len(data) - 8 and data[8:9] == b"{":
            return "safetensors"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if data[:1] == b"\x80" and data[2:14] == _LEGACY_MAGIC:
        return "legacy"
    if data[:1] == b"\x80":
        return "pickle"
    return "unknown"


# ---- safetensors ---------------------------------------------------------------------------------------------------
def _load_safetensors(data, label, device):
    def bad(message):
        return SerializationError(f"cannot load {label}: not a valid safetensors file ({message})")
    n = struct.unpack("<Q", data[:8])[0]
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeError, ValueError, RecursionError) as e:
        raise bad(f"its header is not JSON: {' '.join(str(e).split())}") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise bad("__metadata__ is not an object")
    body = memoryview(data)[8 + n:]
    arrays, spans = {}, []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"the entry of {name!r} is not {{dtype, shape, data_offsets}}")
        kind, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if kind == "BF16":
            dtype = _dtype("bfloat16")
        elif kind in _ST_DTYPES:
            dtype = _dtype(_ST_DTYPES[kind])
        else:
            raise SerializationError(f"cannot load {label}: {name!r} has dtype {kind}, which NumPy cannot hold")
        if not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)):
            raise bad(f"the shape of {name!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(body)):
            raise bad(f"the data_offsets of {name!r} lie outside the file's {len(body)} data bytes")
        nbytes = math.prod(shape) * dtype.np.itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise bad(f"{name!r} of shape {tuple(shape)} and dtype {kind} needs {nbytes} bytes, its data_offsets "
                      f"span {offsets[1] - offsets[0]}")
        raw = np.frombuffer(body[offsets[0]:offsets[1]], dtype=dtype.np.newbyteorder("<")).reshape(shape)
        arrays[name] = _to_native(raw, dtype)
        spans.append((offsets[0], offsets[1], name))
    spans.sort()                                                   # file order (stable for empty tensors)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):   # consecutive pairs
        if start < end:
            raise bad(f"the data of {a!r} and {b!r} overlap")
    if TREE_KEY not in meta:
        return {name: Tensor(arrays[name], device=device) for _, _, name in spans}
    try:
        tree = json.loads(meta[TREE_KEY])
        if not isinstance(tree, dict) or tree.get("version") != TREE_VERSION or "root" not in tree:
            raise ValueError(f"not a version-{TREE_VERSION} tree")
        unused = set(arrays)
        out = _decode(tree["root"], arrays, unused, device)
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise bad(f"its {TREE_KEY} metadata is corrupt: {' '.join(str(e).split())}") from None
    if unused:
        raise bad(f"its tree does not place the tensor {min(unused)!r}")
    return out


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _decode(node, arrays, unused, device):
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if not isinstance(node, dict) or not node:
        raise ValueError(f"unexpected node {node!r:.60}")
    tag = next(iter(node))
    body = node[tag]
    if tag in ("tensor", "array", "scalar"):
        if body not in arrays:
            raise KeyError(f"it names a tensor {body!r} the file lacks")
        unused.discard(body)
        a = arrays[body]
        if tag == "array":
            return a
        if tag == "scalar":
            return a[()]
        grad = node.get("requires_grad", False) is True and a.dtype.kind == "f"
        return Tensor(a, requires_grad=grad, device=device)
    if len(node) != 1:
        raise ValueError(f"unexpected node {node!r:.60}")
    if tag == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag in ("dict", "odict") and isinstance(body, dict):
        items = ((k, _decode(v, arrays, unused, device)) for k, v in body.items())
        return collections.OrderedDict(items) if tag == "odict" else dict(items)
    if tag in ("list", "tuple") and isinstance(body, list):
        items = [_decode(v, arrays, unused, device) for v in body]
        return items if tag == "list" else tuple(items)
    raise ValueError(f"unexpected node {node!r:.60}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# ---- torch.save's zip format ---------------------------------------------------------------------------------------
class _StorageType:
    """What torch.FloatStorage (and the like) stands for in the pickle: the element type of a storage; untyped
    storages (torch.storage.UntypedStorage) are counted in bytes and take their dtype from _rebuild_tensor_v3."""

    def __init__(self, name, dtype=None):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"torch.{self.name}"


class _TorchDtype:
    """What torch.uint16 (and the like) stands for in the pickle: an element type, possibly not NumPy's."""

    def __init__(self, name):
        self.name = name
        self.dtype = None if name in _TORCH_UNSUPPORTED else _dtype(_TORCH_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """One storage record of the archive: its bytes, in the file's byte order, and its element type (None: an
    untyped storage, read by the dtype of the tensor that views it)."""

    def __init__(self, key, data, dtype):
        self.key, self.data, self.dtype = key, data, dtype


def _allowed_globals():
    """{(module, name): what it stands for}: every global a pickled dict of CPU tensors and Parameters holds, as
    torch 2.x writes them (pickletools.dis of its data.pkl): containers, the tensor rebuild functions, the storage
    and dtype markers. Nothing else is ever looked up."""
    table = {("collections", "OrderedDict"): collections.OrderedDict,
             ("torch._utils", "_rebuild_tensor_v2"): "_rebuild_tensor_v2",
             ("torch._utils", "_rebuild_tensor_v3"): "_rebuild_tensor_v3",
             ("torch._utils", "_rebuild_parameter"): "_rebuild_parameter",
             ("torch._utils", "_rebuild_parameter_with_state"): "_rebuild_parameter_with_state",
             ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage")}
    table.update({("torch", name): _StorageType(name, _dtype(kind)) for name, kind in _TORCH_STORAGES.items()})
    table.update({("torch", name): _TorchDtype(name) for name in list(_TORCH_DTYPES) + list(_TORCH_UNSUPPORTED)})
    return table


ALLOWED_GLOBALS = _allowed_globals()


class _TensorUnpickler(pickle.Unpickler):
    """pickle.Unpickler that can build nothing but containers and tensors: find_class answers only the globals of
    ALLOWED_GLOBALS (the rebuild functions mapped onto this class's methods), and persistent_load only
    ('storage', <storage type>, key, location, size) ids of records present in the archive."""

    def __init__(self, data, label, archive, prefix, byteorder, device):
        super().__init__(io.BytesIO(data))
        self.label, self.archive, self.prefix, self.device = label, archive, prefix, device
        self.endian = "<" if byteorder == "little" else ">"
        self.storages = {}                                          # key -> _Storage (views share one)

    def bad(self, message):
        return SerializationError(f"cannot load {self.label}: {message}")

    def find_class(self, module, name):
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafeFileError(
                f"refusing to load {self.label}: its pickle asks for {module}.{name}, which a saved state dict "
                "never needs; only tensors and plain containers are rebuilt (nothing was run). A whole pickled "
                "model or other object cannot be loaded: save its state_dict() instead")
        return getattr(self, target) if isinstance(target, str) else target

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_int(pid[4])
                and pid[4] >= 0):
            raise self.bad(f"its pickle holds an unexpected persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid                        # the location (cpu, cuda:0 ...) is ignored
        if key in self.storages:
            if self.storages[key].dtype is not kind.dtype:
                raise self.bad(f"its pickle reads storage {key!r} as two different types")
            return self.storages[key]
        record = f"{self.prefix}/data/{key}"
        try:
            data = self.archive.read(record)
        except KeyError:
            raise self.bad(f"its pickle refers to storage {key!r}, but the archive has no record {record}") from None
        need = numel * (kind.dtype.np.itemsize if kind.dtype is not None else 1)
        if len(data) < need:
            raise self.bad(f"storage {key!r} holds {len(data)} bytes, fewer than the {need} its pickle says")
        storage = self.storages[key] = _Storage(key, data[:need], kind.dtype)
        return storage

    # the rebuild functions torch.save names (torch/_utils.py), each returning a Tensor
    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                           metadata=None):
        if not isinstance(storage, _Storage) or storage.dtype is None:
            raise self.bad("its pickle rebuilds a tensor from something other than a typed storage")
        return self._tensor(storage, storage.dtype, storage_offset, size, stride, requires_grad, metadata)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                           metadata=None):
        if not isinstance(storage, _Storage) or storage.dtype is not None or not isinstance(dtype, _TorchDtype):
            raise self.bad("its pickle rebuilds a tensor from something other than an untyped storage and a dtype")
        if dtype.dtype is None or dtype.dtype.np is None:
            raise self.bad(f"it holds a tensor of dtype torch.{dtype.name}, which NumPy cannot hold")
        return self._tensor(storage, dtype.dtype, storage_offset, size, stride, requires_grad, metadata)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        if not isinstance(data, Tensor) or not isinstance(requires_grad, bool):
            raise self.bad("its pickle rebuilds a Parameter from something other than a tensor")
        return Tensor(data, requires_grad=requires_grad and data.dtype.kind == "f", device=self.device)

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        return self._rebuild_parameter(data, requires_grad, backward_hooks)   # Python attributes: not kept

    def _tensor(self, storage, dtype, offset, size, stride, requires_grad, metadata):
        """The array that (offset, size, stride), in elements, cut out of `storage`, as a Tensor on the device."""
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                and all(_is_int(v) and v >= 0 for v in (offset,) + size + stride)
                and isinstance(requires_grad, bool)):
            raise self.bad(f"its pickle rebuilds a tensor with an invalid offset {offset!r:.20}, size "
                           f"{size!r:.40} or stride {stride!r:.40}")
        if metadata and any(metadata.values()):
            raise self.bad(f"it holds a tensor with metadata {metadata!r:.60} (e.g. a lazy conjugate), "
                           "which is not read here")
        itemsize = dtype.np.itemsize
        count = len(storage.data) // itemsize
        if math.prod(size) == 0:
            raw = np.empty(size, dtype=dtype.np)
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))   # the view's last element
            if last >= count:
                raise self.bad(f"a tensor of size {size}, stride {stride} at offset {offset} reads element {last} "
                               f"of storage {storage.key!r}, which holds {count}")
            flat = np.frombuffer(storage.data, dtype=dtype.np.newbyteorder(self.endian), count=count)   # (count,)
            raw = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                                  strides=tuple(s * itemsize for s in stride), writeable=False)
        arr = _to_native(raw, dtype)                                # (*size), a copy: shares nothing with the file
        return Tensor(arr, requires_grad=requires_grad and arr.dtype.kind == "f", device=self.device)


def _load_torch_zip(data, label, device):
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise SerializationError(f"cannot load {label}: a damaged zip archive ({e})") from None
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise SerializationError(f"cannot load {label}: a zip archive but not a torch.save file (it needs exactly "
                                 f"one <name>/data.pkl, found {len(pickles)})")
    prefix = pickles[0].split("/")[0]
    try:
        byteorder = archive.read(f"{prefix}/byteorder").decode("ascii") \
            if f"{prefix}/byteorder" in names else "little"          # absent: torch reads little-endian
        if byteorder not in ("little", "big"):
            raise SerializationError(f"cannot load {label}: unknown byte order {byteorder!r:.20}")
        unpickler = _TensorUnpickler(archive.read(pickles[0]), label, archive, prefix, byteorder, device)
        return unpickler.load()
    except SerializationError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, TypeError, AttributeError, IndexError, KeyError,
            ValueError, OverflowError, UnicodeError, RecursionError, OSError) as e:
        raise SerializationError(f"cannot load {label}: its pickle is malformed or not a dict of tensors "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
