"""tinygrad_gpt.serialization: save/load of trees of tensors as safetensors, and torch.save files read without torch
and without running their pickles.

Every comparison is exact (assert_array_equal, same dtype): no value is computed, only bytes moved (bfloat16 is
widened to float32, which is exact too: its 16 bits are the high half of a float32).
"""
import collections
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from no_torch import BLOCK_TORCH
from tinygrad_gpt import serialization
from tinygrad_gpt.errors import SerializationError, UnsafeFileError
from tinygrad_gpt.serialization import ALLOWED_GLOBALS, load, save
from tinygrad_gpt.tensor import Tensor

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
          np.uint32, np.uint64, np.bool_, np.complex64]


def torch_or_skip():
    return pytest.importorskip("torch")


def assert_same(a, b, where="obj"):
    """Same tree, same types, arrays equal bit for bit with the same dtype (NaN equal to NaN)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, Tensor):
        assert a.requires_grad == b.requires_grad, where
        a, b = a.numpy(), b.numpy()
    if isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def round_trip(obj, tmp_path, via="path"):
    if via == "path":
        save(obj, tmp_path / "obj.st")
        return load(tmp_path / "obj.st")
    buf = io.BytesIO()
    save(obj, buf)
    buf.seek(0)
    return load(buf)


# ---- our own files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["path", "file object"])
def test_nested_tree_round_trip(tmp_path, via):
    rng = np.random.default_rng(0)
    tree = {
        "model": collections.OrderedDict([("w", Tensor(rng.standard_normal((3, 4)).astype(np.float32))),
                                          ("b", Tensor(np.zeros(4, np.float32), requires_grad=True))]),
        "iter": 5, "name": "x", "lr": 1e-3, "flags": [True, False, None], "nan": float("nan"),
        "inf": (float("inf"), -float("inf")), "unicode": "héllo ✓", "big": 2 ** 100,
        "history": [np.arange(3), (np.float32(1.5), np.int64(-2), np.float64(0.1), np.bool_(True)),
                    {"deep": [[Tensor(np.ones((2, 2)))]]}],
        "empty": {}, "empty_list": [], "empty_tuple": (),
    }
    back = round_trip(tree, tmp_path, via)
    assert_same(tree, back)
    assert type(round_trip([np.str_("s")], tmp_path, via)[0]) is str     # NumPy's str is a str: kept as one


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (2, 3), (1, 5, 1)])
def test_every_dtype_and_shape_round_trips(tmp_path, dtype, shape):
    rng = np.random.default_rng(1)
    a = np.asarray(rng.standard_normal(shape) * 100).astype(dtype)         # (0-d: an array, not a scalar)
    back = round_trip({"t": Tensor(a), "a": a}, tmp_path)
    assert_same({"t": Tensor(a), "a": a}, back)


def test_non_contiguous_and_foreign_byte_order_inputs(tmp_path):
    base = np.arange(48, dtype=np.float64).reshape(6, 8)
    views = {"strided": base[1:, ::3], "transposed": base.T, "fortran": np.asfortranarray(base),
             "negative": base[::-1, ::-2], "big_endian": base.astype(">f4"), "tensor_view": Tensor(base[:, 2:5])}
    back = round_trip(views, tmp_path)
    for k, v in views.items():
        v = v.numpy() if isinstance(v, Tensor) else v
        got = back[k].numpy() if isinstance(back[k], Tensor) else back[k]
        np.testing.assert_array_equal(got, v)
        assert got.dtype == v.dtype.newbyteorder("=") and got.dtype.isnative


def test_flat_dict_is_an_ordinary_safetensors_file(tmp_path):
    rng = np.random.default_rng(2)
    sd = {"tok_emb.weight": Tensor(rng.standard_normal((5, 3)).astype(np.float32)),
          "blocks.0.ln1.bias": Tensor(np.zeros(3, np.float32)), "mask": np.tril(np.ones((2, 2), bool))}
    save(sd, tmp_path / "model.safetensors")
    plain = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(plain) == sorted(sd)                            # the names are exactly the keys
    for k, v in sd.items():
        np.testing.assert_array_equal(plain[k], v.numpy() if isinstance(v, Tensor) else v)
    back = load(tmp_path / "model.safetensors")
    assert list(back) == list(sd)                                 # and our load restores the dict's order
    assert_same(sd, back)


def test_nested_names_are_paths(tmp_path):
    save({"model": {"w": np.ones(2)}, "hist": [np.zeros(1)], "model.w": np.ones(1)}, tmp_path / "x.st")
    assert sorted(load_file(str(tmp_path / "x.st"))) == ["hist.0", "model.w", "model.w#1"]
    save(Tensor(np.ones(2)), tmp_path / "one.st")
    assert list(load_file(str(tmp_path / "one.st"))) == ["tensor"]
    assert_same(load(tmp_path / "one.st"), Tensor(np.ones(2)))


def test_foreign_safetensors_file_loads_in_file_order(tmp_path):
    arrays = {"b": np.ones(3, np.float32), "a": np.arange(4, dtype=np.int64).reshape(2, 2), "z": np.array(True)}
    save_file(arrays, str(tmp_path / "foreign.safetensors"))
    back = load(tmp_path / "foreign.safetensors")
    assert all(isinstance(v, Tensor) for v in back.values())
    header = json.loads((tmp_path / "foreign.safetensors").read_bytes()[8:].split(b"}}", 1)[0] + b"}}")
    offsets = {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    assert list(back) == sorted(offsets, key=offsets.get)
    for k, v in arrays.items():
        assert_same(back[k].numpy(), v)


def test_bfloat16_safetensors_file_comes_back_as_float32(tmp_path):
    torch = torch_or_skip()
    from safetensors.torch import save_file as torch_save_file
    t = torch.randn(5, 3).to(torch.bfloat16)
    torch_save_file({"w": t}, str(tmp_path / "bf16.safetensors"))
    back = load(tmp_path / "bf16.safetensors")["w"].numpy()
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, t.float().numpy())


BAD_TREES = {
    "object": ({"a": [1, {"b": (2, object())}]}, "obj['a'][1]['b'][1]", "builtins.object"),
    "set": ({"a": {1, 2}}, "obj['a']", "builtins.set"),
    "function": ([1, lambda x: x], "obj[1]", "function"),
    "int key": ({"a": {3: np.ones(2)}}, "obj['a']", "dict keys must be strings, got int 3"),
    "string array": ({"s": np.array(["x"])}, "obj['s']", "dtype <U1"),
    "object array": ({"o": np.array([None])}, "obj['o']", "dtype object"),
    "bytes": ({"raw": b"abc"}, "obj['raw']", "builtins.bytes"),
}


@pytest.mark.parametrize("case", BAD_TREES)
def test_bad_tree_is_a_type_error_naming_the_place(tmp_path, case):
    tree, where, what = BAD_TREES[case]
    with pytest.raises(TypeError) as e:
        save(tree, tmp_path / "x.st")
    assert where in str(e.value) and what in str(e.value), str(e.value)
    assert not any(tmp_path.iterdir())


def test_a_cycle_is_a_type_error():
    loop = []
    loop.append(loop)
    with pytest.raises(TypeError, match=r"obj\[0\].*cycle"):
        save(loop, io.BytesIO())


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.st"
    save({"w": np.ones(3)}, path)
    good = path.read_bytes()
    with pytest.raises(TypeError):                       # an unsupported object deep in the tree
        save({"w": np.zeros(3), "deep": [[{"x": object()}]]}, path)
    assert path.read_bytes() == good

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(serialization.os, "fsync", disk_full)      # the write itself fails, mid-way
    with pytest.raises(OSError):
        save({"w": np.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.st"]       # no temporary left behind
    assert_same(load(path), {"w": np.ones(3)})


def test_load_from_an_open_file_and_map_location(tmp_path):
    save({"w": Tensor(np.ones(2, np.float32))}, tmp_path / "x.st")
    with open(tmp_path / "x.st", "rb") as f:
        back = load(f, map_location="cpu", weights_only=True, mmap=False)
    assert back["w"].device.name == "cpu"
    with pytest.raises(TypeError, match="map_location"):
        load(tmp_path / "x.st", map_location={"cuda:0": "cpu"})
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.st")


def test_corrupt_safetensors_files_are_one_error(tmp_path):
    save({"w": np.arange(10, dtype=np.float32)}, tmp_path / "good.st")
    data = (tmp_path / "good.st").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    cases = {"truncated": data[:-8]}
    for name, change in {"offsets": {"data_offsets": [0, 400]}, "dtype": {"dtype": "F8_E4M3"},
                         "shape": {"shape": [3, 3]}}.items():
        h = json.loads(json.dumps(header))
        h["w"].update(change)
        text = json.dumps(h).encode()
        text += b" " * (-len(text) % 8)
        cases[name] = struct.pack("<Q", len(text)) + text + data[8 + n:]
    h = json.loads(json.dumps(header))
    h["__metadata__"][serialization.TREE_KEY] = json.dumps({"version": 1, "root": {"tensor": "nope"}})
    text = json.dumps(h).encode()
    cases["tree names a missing tensor"] = struct.pack("<Q", len(text)) + text + data[8 + n:]
    for name, blob in cases.items():
        (tmp_path / "bad.st").write_bytes(blob)
        with pytest.raises(SerializationError) as e:
            load(tmp_path / "bad.st")
        assert "\n" not in str(e.value) and "bad.st" in str(e.value), name


# ---- files torch.save wrote ------------------------------------------------------------------------------------------
def lecture_like_model(torch):
    """Linear, Embedding, LayerNorm and a registered tril buffer: what the lecture's state dicts hold."""
    nn = torch.nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embedding_table = nn.Embedding(11, 6)
            self.ln = nn.LayerNorm(6)
            self.head = nn.Linear(6, 11)
            self.register_buffer("tril", torch.tril(torch.ones(4, 4)))
    torch.manual_seed(0)
    return Tiny()


def test_torch_state_dict_loads_exactly(tmp_path):
    torch = torch_or_skip()
    sd = lecture_like_model(torch).state_dict()
    torch.save(sd, tmp_path / "model.pt")
    back = load(tmp_path / "model.pt")
    assert isinstance(back, collections.OrderedDict) and list(back) == list(sd)
    for k, v in sd.items():
        assert_same(back[k].numpy(), v.numpy(), k)


def test_torch_dtypes_views_parameters_and_nested_values(tmp_path):
    torch = torch_or_skip()
    base = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    obj = {
        "model": lecture_like_model(torch).state_dict(), "iter": 5, "name": "x", "losses": [1.5, 2.0, None],
        "shape": (2, 3), "flag": True,
        "f32": torch.randn(3, 2), "f64": torch.randn(3, dtype=torch.float64), "f16": torch.randn(4).half(),
        "i64": torch.arange(-3, 3), "i32": torch.arange(4, dtype=torch.int32), "i16": torch.arange(3).short(),
        "i8": torch.arange(-2, 2).to(torch.int8), "u8": torch.arange(250, 256).to(torch.uint8),
        "bool": torch.tensor([True, False, True]), "c64": torch.randn(2, dtype=torch.complex64),
        "u16": torch.tensor([1, 65535]).to(torch.uint16),                 # torch's _rebuild_tensor_v3 path
        "scalar": torch.tensor(3.25), "empty": torch.zeros(0, 3),
        "base": base, "view": base[1:, ::2], "row": base[2], "transposed": base.t(),   # all one storage
        "expanded": torch.ones(3, 1).expand(3, 4),                                     # stride 0
        "param": torch.nn.Parameter(torch.randn(2)),
        "frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False),
    }
    bf16 = torch.randn(7).to(torch.bfloat16)
    torch.save({**obj, "bf16": bf16}, tmp_path / "all.pt")
    back = load(tmp_path / "all.pt")
    assert back["iter"] == 5 and back["name"] == "x" and back["losses"] == [1.5, 2.0, None]
    assert back["shape"] == (2, 3) and back["flag"] is True
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            got = back[k].numpy()
            expected = v.detach().numpy()
            assert got.dtype == expected.dtype and got.shape == expected.shape, k
            np.testing.assert_array_equal(got, expected, err_msg=k)
    for k, v in obj["model"].items():
        np.testing.assert_array_equal(back["model"][k].numpy(), v.numpy())
    np.testing.assert_array_equal(back["bf16"].numpy(), bf16.float().numpy())
    assert back["bf16"].dtype == np.float32
    assert back["param"].requires_grad and not back["frozen"].requires_grad and not back["f32"].requires_grad


def test_big_endian_torch_file(tmp_path):
    """A file written on a big-endian machine (its byteorder record says so): rebuilt from swapped bytes."""
    torch = torch_or_skip()
    obj = {"f": torch.randn(3, 2), "i": torch.arange(5), "h": torch.randn(3).half(), "b": torch.randn(2).bfloat16()}
    torch.save(obj, tmp_path / "little.pt")
    with zipfile.ZipFile(tmp_path / "little.pt") as src, zipfile.ZipFile(tmp_path / "big.pt", "w") as dst:
        pkl = src.read("little/data.pkl")
        sizes = {"f": 4, "i": 8, "h": 2, "b": 2}
        order = [k for k in obj]                       # storages are numbered in the order the pickle meets them
        for name in src.namelist():
            data = src.read(name)
            if name == "little/byteorder":
                data = b"big"
            elif name.startswith("little/data/"):
                width = sizes[order[int(name.rsplit("/", 1)[1])]]
                data = np.frombuffer(data, dtype=f"<u{width}").astype(f">u{width}").tobytes()
            dst.writestr(name, data if name != "little/data.pkl" else pkl)
    back = load(tmp_path / "big.pt")
    for k, v in obj.items():
        np.testing.assert_array_equal(back[k].numpy(), v.float().numpy() if k == "b" else v.numpy())


def test_a_whole_pickled_model_is_refused(tmp_path):
    torch = torch_or_skip()
    torch.save(torch.nn.Linear(2, 3), tmp_path / "model.pt")
    with pytest.raises(UnsafeFileError, match="torch.nn.modules.linear.Linear"):
        load(tmp_path / "model.pt")


# ---- hostile files: refused, and their payload never runs ----------------------------------------------------------
def op_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b                   # BINUNICODE


def op_int(i):
    return b"J" + struct.pack("<i", i)                            # BININT


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def tup(*parts):
    return b"(" + b"".join(parts) + b"t"                          # MARK ... TUPLE


def call(fn, *args):
    return fn + tup(*args) + b"R"                                 # REDUCE


def tensor_op(key, numel, offset, size, stride, storage="FloatStorage"):
    """The opcodes torch.save emits for one tensor (see pickletools.dis of a data.pkl)."""
    pid = tup(op_str("storage"), glob("torch", storage), op_str(key), op_str("cpu"), op_int(numel)) + b"Q"
    return call(glob("torch._utils", "_rebuild_tensor_v2"), pid, op_int(offset), tup(*map(op_int, size)),
                tup(*map(op_int, stride)), b"\x89", call(glob("collections", "OrderedDict")))


def dict_pkl(**values):
    """A protocol-2 pickle of {name: <opcodes>}."""
    return b"\x80\x02}" + b"".join(op_str(k) + v + b"s" for k, v in values.items()) + b"."


def torch_zip(path, pkl, storages=()):
    """A torch.save-style archive: archive/data.pkl, archive/byteorder, archive/data/<key>."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in dict(storages).items():
            z.writestr(f"archive/data/{key}", data)
    return path


def test_the_handmade_archive_is_read_like_torch_s(tmp_path):
    """The opcode helpers above build what torch.save builds: this valid one loads (so the refusals below are due
    to the one thing each changes)."""
    data = np.arange(6, dtype="<f4").tobytes()
    back = load(torch_zip(tmp_path / "ok.pt", dict_pkl(w=tensor_op("0", 6, 1, (2, 2), (3, 1))), {"0": data}))
    np.testing.assert_array_equal(back["w"].numpy(), np.array([[1, 2], [4, 5]], np.float32))


def hostile_payloads(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": call(glob("os", "system"), op_str(f"touch {marker}")),
        "posix.system": call(glob("posix", "system"), op_str(f"touch {marker}")),
        "builtins.eval": call(glob("builtins", "eval"), op_str(touch)),
        "builtins.exec": call(glob("builtins", "exec"), op_str(touch)),
        "subprocess.call": call(glob("subprocess", "call"), tup(op_str("touch"), op_str(str(marker)))),
        "builtins.print": call(glob("builtins", "print"), op_str("harmless-looking, still not allowed")),
        "builtins.getattr": call(glob("builtins", "getattr"), glob("collections", "OrderedDict"), op_str("x")),
        "torch.load": call(glob("torch", "load"), op_str(str(marker))),
    }


def test_the_payloads_do_run_when_unpickled_plainly(tmp_path):
    """The marker means something: plain pickle.loads of the eval payload creates it (a harmless file in tmp)."""
    marker = tmp_path / "RAN"
    pickle.loads(dict_pkl(evil=hostile_payloads(marker)["builtins.eval"]))
    assert marker.exists()


@pytest.mark.parametrize("name", list(hostile_payloads("m")))
def test_hostile_global_is_refused_before_it_runs(tmp_path, name):
    marker = tmp_path / "PWNED"
    payload = hostile_payloads(marker)[name]
    data = np.ones(2, "<f4").tobytes()
    path = torch_zip(tmp_path / "model.pt", dict_pkl(w=tensor_op("0", 2, 0, (2,), (1,)), evil=payload), {"0": data})
    with pytest.raises(UnsafeFileError) as e:
        load(path)
    message = str(e.value)
    assert f"asks for {name}," in message and "model.pt" in message and "\n" not in message
    assert not marker.exists()


def test_hostile_object_inside_a_real_torch_file_never_runs(tmp_path):
    torch = torch_or_skip()
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    torch.save({"w": torch.ones(2), "evil": Evil()}, tmp_path / "model.pt")
    with pytest.raises(UnsafeFileError, match=r"asks for (os|posix)\.system, which a saved state dict never needs"):
        load(tmp_path / "model.pt")
    assert not marker.exists()

    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(Evil()))         # a plain pickle: not even opened as one
    with pytest.raises(UnsafeFileError, match="plain Python pickle"):
        load(tmp_path / "plain.pkl")
    torch.save({"evil": Evil()}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(SerializationError, match="legacy format"):
        load(tmp_path / "legacy.pt")
    assert not marker.exists()


BROKEN_STORAGES = {
    "missing storage": (tensor_op("7", 2, 0, (2,), (1,)), {"0": b"\0" * 8}, "no record archive/data/7"),
    "storage too short": (tensor_op("0", 4, 0, (4,), (1,)), {"0": b"\0" * 8}, "fewer than the 16"),
    "view past the end": (tensor_op("0", 4, 2, (2, 2), (2, 1)), {"0": b"\0" * 16}, "reads element 5"),
    "negative offset": (tensor_op("0", 4, -1, (2,), (1,)), {"0": b"\0" * 16}, "invalid offset"),
    "bad persistent id": (call(glob("torch._utils", "_rebuild_tensor_v2"), tup(op_str("x")) + b"Q", op_int(0),
                               tup(), tup(), b"\x89", call(glob("collections", "OrderedDict"))),
                          {}, "unexpected persistent id"),
    "wrong rebuild arguments": (call(glob("torch._utils", "_rebuild_tensor_v2"), op_int(1)), {}, "malformed"),
    "storage type called": (call(glob("torch", "FloatStorage"), op_int(1)), {}, "malformed"),
}


@pytest.mark.parametrize("case", BROKEN_STORAGES)
def test_broken_storage_references_are_one_error(tmp_path, case):
    op, storages, expected = BROKEN_STORAGES[case]
    path = torch_zip(tmp_path / "model.pt", dict_pkl(w=op), storages)
    with pytest.raises(SerializationError) as e:
        load(path)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not isinstance(e.value, UnsafeFileError)


def test_other_files_are_refused_unread(tmp_path):
    cases = {"empty": b"", "text": b"hello world, not tensors", "plain pickle": pickle.dumps({"a": 1}),
             "protocol-0 pickle": pickle.dumps({"a": 1}, protocol=0)}
    np.savez(tmp_path / "arrays.npz", a=np.ones(2))
    cases["npz (a zip without data.pkl)"] = (tmp_path / "arrays.npz").read_bytes()
    for name, blob in cases.items():
        (tmp_path / "f").write_bytes(blob)
        with pytest.raises(SerializationError) as e:
            load(tmp_path / "f")
        assert "\n" not in str(e.value), name


def test_only_the_listed_globals_are_allowed():
    """What torch 2.x's data.pkl of a dict of tensors and Parameters names (pickletools.dis), and nothing else."""
    modules = {m for m, _ in ALLOWED_GLOBALS}
    assert modules == {"collections", "torch._utils", "torch.storage", "torch"}
    assert {n for m, n in ALLOWED_GLOBALS if m == "torch._utils"} == {
        "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter", "_rebuild_parameter_with_state"}
    assert all(n.endswith("Storage") or not callable(v) for (m, n), v in ALLOWED_GLOBALS.items() if m == "torch")
    source = Path(serialization.__file__).read_text()
    assert "pickle.load(" not in source and "pickle.loads(" not in source and "import torch" not in source


# ---- no torch at all -----------------------------------------------------------------------------------------------
NO_TORCH = BLOCK_TORCH + r"""
import json, sys
from tinygrad_gpt.serialization import load
sd = load(sys.argv[1])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print(json.dumps({k: [str(v.dtype), list(v.shape), v.numpy().astype("float64").ravel().tolist()]
                  for k, v in sd.items()}))
"""


@pytest.mark.slow  # a subprocess
def test_torch_file_loads_where_torch_is_not_importable(tmp_path):
    torch = torch_or_skip()
    sd = lecture_like_model(torch).state_dict()
    sd["bf16"] = torch.randn(3).bfloat16()
    torch.save(sd, tmp_path / "model.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path / "model.pt")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(got) == list(sd)
    for k, v in sd.items():
        v = v.float() if v.dtype == torch.bfloat16 else v
        assert got[k][0] == str(v.numpy().dtype) and got[k][1] == list(v.shape)
        np.testing.assert_array_equal(np.array(got[k][2]), v.numpy().astype(np.float64).ravel())
