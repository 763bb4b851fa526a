"""PyTorch checkpoints read without PyTorch, and without running anything they name.

The fixtures in tests/fixtures/torch/reader were written by real PyTorch 2.13:
``checkpoint_<format>.pt`` and ``expected.npz`` by tools/torch_reader_fixtures.py.
The hostile, truncated and hand-made files are built here, from pickle opcodes.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from conftest import REPO_ROOT

from smoothjax.errors import InputError
from smoothjax.published import pickles

READER = os.path.join(REPO_ROOT, "tests", "fixtures", "torch", "reader")
FORMATS = ("zip", "legacy")


def fixture(name: str) -> str:
  return os.path.join(READER, name)


def arrays(obj, path=()) -> dict[str, np.ndarray]:
  """Every array in ``obj`` by its path, as tools/torch_reader_fixtures.py names them."""
  if isinstance(obj, np.ndarray):
    return {"/".join(path): obj}
  if isinstance(obj, dict):
    items = obj.items()
  elif isinstance(obj, list | tuple):
    items = enumerate(obj)
  else:
    return {}
  out = {}
  for key, value in items:
    out.update(arrays(value, (*path, str(key))))
  return out


def assert_exactly(got: np.ndarray, want: np.ndarray, what: str) -> None:
  assert isinstance(got, np.ndarray), what
  assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape)
  assert got.flags.c_contiguous and got.flags.writeable and got.dtype.isnative, what
  assert got.tobytes() == want.tobytes(), what  # bit for bit


def read_error(path) -> str:
  """The message of the InputError that reading ``path`` raises: one line naming it."""
  with pytest.raises(InputError) as e:
    pickles.read(str(path))
  message = str(e.value)
  assert "\n" not in message and "\r" not in message, message
  assert str(path) in message, message
  return message


# -------------------------------------------------------------------- files from PyTorch
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_tensor_reads_exactly_views_offsets_and_strides_included(fmt):
  t = pickles.read(fixture(f"checkpoint_{fmt}.pt"))
  assert t.format == fmt
  expected = np.load(fixture("expected.npz"))
  got = arrays(t.obj)
  assert sorted(got) == sorted(expected.files)
  for key in expected.files:
    assert_exactly(got[key], expected[key], key)
  dtypes = {key: got[f"dtypes/{key}"].dtype for key in ("float16", "bfloat16", "bool", "uint16")}
  assert dtypes == {"float16": np.float16, "bfloat16": np.float32, "bool": np.bool_,
                    "uint16": np.uint16}
  views = t.obj["views"]
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  np.testing.assert_array_equal(views["slice"], base[1:3])  # storage offset 6
  np.testing.assert_array_equal(views["transposed"], base.T)
  np.testing.assert_array_equal(views["offset_strided"], base[1:, 1::3])
  assert views["element"].shape == () and views["element"] == 23.0  # the last element
  assert views["empty"].shape == (0, 3)
  assert views["conj"].dtype == np.complex64 and views["neg"].dtype == np.float32
  # Each view is its own copy, not a window on a shared buffer.
  assert not np.shares_memory(views["base"], views["slice"])
  assert t.obj["scalar"].shape == () and t.obj["scalar"] == 2.5
  assert t.obj["scalar_int"].dtype == np.int64 and t.obj["scalar_int"] == 7


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_state_dict_is_an_ordered_dict_in_its_order_and_the_rest_reads(fmt):
  obj = pickles.read(fixture(f"checkpoint_{fmt}.pt")).obj
  state = obj["state_dict"]
  assert type(state) is OrderedDict
  assert list(state) == [
    "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
    "1.num_batches_tracked", "2.weight", "2.bias",
  ]
  assert state["1.num_batches_tracked"].dtype == np.int64 and state["1.num_batches_tracked"] == 1
  assert state["0.weight"].shape == (2, 1, 3, 3)
  # Plain values and containers keep their types.
  assert obj["nested"][:1] == [1] and isinstance(obj["nested"][1], tuple)
  assert obj["nested"][1][:3] == (2.5, "three", None) and obj["nested"][1][3][0] is True
  assert isinstance(obj["nested"][1][3][1], tuple) and obj["nested"][2] == {"k": [()]}
  assert obj["plain"] == {"int": 90, "float": 0.25, "str": "cifar_resnet110", "none": None,
                          "big": 2**70}
  assert type(obj["numpy_scalar"]) is np.float64 and obj["numpy_scalar"] == 0.1
  assert obj["epoch"] == 90
  # The optimizer's state_dict: integer keys, tuples, tensors, all read.
  optimizer = obj["optimizer"]
  assert sorted(optimizer["state"]) == [0, 1, 2, 3, 4, 5]
  assert optimizer["state"][0]["step"].shape == () and optimizer["state"][0]["step"] == 1
  assert optimizer["param_groups"][0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("fmt", FORMATS)
def test_argparse_and_dill_globals_are_placeholders_that_hold_what_they_were_given(fmt):
  t = pickles.read(fixture(f"checkpoint_{fmt}.pt"))
  assert t.placeholders == tuple(sorted(set(t.placeholders)))
  assert {"argparse.Namespace", "dill._dill._create_function", "dill._dill._create_code"} <= set(
    t.placeholders
  )
  # Every torch global of a torch 2.13 file is on the allow-list; only these are not.
  assert all(n.split(".")[0] in ("argparse", "dill", "__main__") for n in t.placeholders)
  args = t.obj["args"]
  assert isinstance(args, pickles.Placeholder) and args.name == "argparse.Namespace"
  assert args.args == () and args.state == {"arch": "resnet50", "noise_sd": 0.25,
                                            "epochs": [1, 2]}
  assert repr(args) == (
    "<Placeholder argparse.Namespace() state={'arch': 'resnet50', 'epochs': [1, 2], "
    "'noise_sd': 0.25}>"
  )
  schedule = t.obj["schedule"]
  assert isinstance(schedule, pickles.Placeholder)
  assert schedule.name == "dill._dill._create_function"
  assert "'<lambda>'" in repr(schedule) and len(repr(schedule)) < 1000


# ---------------------------------------------------------------- hand-made files: opcodes
def _unicode(text: str) -> bytes:
  raw = text.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
  return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


FLOAT = _global("torch", "FloatStorage")


def _pid(numel: int, key="0", storage=FLOAT, view=None) -> bytes:
  """A storage's persistent id: zip format, or legacy with ``view`` (b"N" for none)."""
  fields = [_unicode("storage"), storage, _unicode(key), _unicode("cpu"), _int(numel)]
  return _tuple(*fields, *([view] if view is not None else []))


def _tensor(pid: bytes, size, stride, offset=0, rebuild="_rebuild_tensor_v2", extra=b"") -> bytes:
  """The opcodes of one tensor, as torch writes them (protocol 2)."""
  args = _tuple(pid + b"Q", _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                b"\x89", _global("collections", "OrderedDict") + b")R", extra)
  return _global("torch._utils", rebuild) + args + b"R"


def _pickle(body: bytes) -> bytes:
  return b"\x80\x02" + body + b"."


def _zip(tmp_path, data_pkl: bytes, storages=None, name="made.pt", byteorder="little") -> str:
  path = str(tmp_path / name)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data_pkl)
    z.writestr("archive/byteorder", byteorder)
    for key, raw in (storages or {}).items():
      z.writestr(f"archive/data/{key}", raw)
    z.writestr("archive/version", "3\n")
  return path


def _legacy(tmp_path, main: bytes, storages=(), name="made_legacy.pt", magic=None,
            protocol=None) -> str:
  """The legacy stream: magic, protocol, system info, the pickle, keys, raw storages."""
  out = io.BytesIO()
  head = (magic or pickles.MAGIC_NUMBER, protocol or pickles.PROTOCOL_VERSION,
          {"little_endian": True, "type_sizes": {"int": 4}})
  for value in head:
    pickle.dump(value, out, protocol=2)
  out.write(main)
  pickle.dump([key for key, _, _ in storages], out, protocol=2)
  for _, count, raw in storages:
    out.write(struct.pack("<q", count) + raw)
  path = str(tmp_path / name)
  with open(path, "wb") as f:
    f.write(out.getvalue())
  return path


DATA = np.arange(12, dtype=np.float32)


def test_hand_made_tensors_read_as_torch_would_and_the_builders_are_right(tmp_path):
  # A transposed 3x4 view and a strided one at an offset, from one storage (zip format).
  body = b"}(" + _unicode("t") + _tensor(_pid(12), (4, 3), (1, 4))
  body += _unicode("s") + _tensor(_pid(12), (2, 2), (6, 2), offset=1) + b"u"
  obj = pickles.read(_zip(tmp_path, _pickle(body), {"0": DATA.tobytes()})).obj
  np.testing.assert_array_equal(obj["t"], DATA.reshape(3, 4).T)
  np.testing.assert_array_equal(obj["s"], np.array([[1, 3], [7, 9]], np.float32))
  # A big-endian file (its byteorder record says so).
  big = {"0": DATA.astype(">f4").tobytes()}
  path = _zip(tmp_path, _pickle(_tensor(_pid(12), (12,), (1,))), big, "big.pt", byteorder="big")
  assert_exactly(pickles.read(path).obj, DATA, "big-endian")
  # bfloat16: the upper 16 bits of a float32, exactly.
  bits = (np.array([1.5, -2.0, 3.140625, 1e-30], np.float32).view(np.uint32) >> 16).astype("<u2")
  path = _zip(tmp_path, _pickle(_tensor(_pid(4, storage=_global("torch", "BFloat16Storage")),
                                        (4,), (1,))), {"0": bits.tobytes()}, "bf16.pt")
  got = pickles.read(path).obj
  assert_exactly(got, (bits.astype(np.uint32) << 16).view(np.float32), "bfloat16")
  assert got[0] == 1.5 and got[2] == 3.140625
  # _rebuild_tensor_v3 over an untyped storage (torch 2's uint16 tensors), as a Parameter.
  tensor = _tensor(_pid(6, storage=_global("torch.storage", "UntypedStorage")), (3,), (1,),
                   rebuild="_rebuild_tensor_v3", extra=_global("torch", "uint16"))
  body = _global("torch._utils", "_rebuild_parameter") + _tuple(tensor, b"\x88", b"}") + b"R"
  raw = np.array([1, 2, 65535], "<u2").tobytes()
  assert_exactly(pickles.read(_zip(tmp_path, _pickle(body), {"0": raw}, "u16.pt")).obj,
                 np.array([1, 2, 65535], np.uint16), "uint16")
  # The legacy stream: a storage view (offset 2, 6 elements) of a root of 12, as PyTorch
  # before 1.0 wrote them, and a tensor of 2x3 over the view.
  pid = _pid(12, key="r", view=_tuple(_unicode("v"), _int(2), _int(6)))
  path = _legacy(tmp_path, _pickle(_tensor(pid, (2, 3), (3, 1))), [("r", 12, DATA.tobytes())])
  t = pickles.read(path)
  assert t.format == "legacy" and t.placeholders == ()
  assert_exactly(t.obj, DATA[2:8].reshape(2, 3), "legacy view")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_values_and_harmless_builtins_read_from_their_bytes(tmp_path, protocol):
  values = {
    "array": np.arange(6, dtype=np.int16).reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "big_endian": np.array([1, -2], ">i4"),
    "text": np.array(["ab", "c"]),
    "objects": np.array([1, "a", None], dtype=object),
    "scalar": np.float32(2.5),
    "when": np.datetime64("2020-01-02", "ns"),
    "dtype": np.dtype(">f8"),
    "bytes": b"\x00\xffraw",
    "empty_bytes": b"",
    "bytearray": bytearray(b"xy"),
    "set": {1, 2},
    "frozenset": frozenset({"a"}),
    "complex": complex(1.5, -2),
    "slice": slice(1, 10, 2),
  }
  raw = pickle.dumps(values, protocol=protocol)
  files = [raw] + ([raw.replace(b"numpy._core", b"numpy.core")] if protocol == 2 else [])
  for i, data_pkl in enumerate(files):  # NumPy 2's module names, then NumPy 1's
    t = pickles.read(_zip(tmp_path, data_pkl, name=f"numpy_{i}.pt"))
    assert t.placeholders == ()
    got = t.obj
    for key, want in values.items():
      if isinstance(want, np.ndarray):
        assert got[key].dtype == want.dtype.newbyteorder("=") and got[key].flags.c_contiguous
        assert got[key].shape == want.shape and (got[key] == want).all(), key
      else:
        assert type(got[key]) is type(want) and got[key] == want, (key, got[key])
  assert protocol != 2 or b"numpy.core.multiarray" in files[1]  # the NumPy 1 file was made


def test_a_whole_module_and_a_tensor_subclass_become_placeholders_with_their_data(tmp_path):
  # torch.save(model) in the legacy format: the class arrives as ("module", class, file,
  # source), then NEWOBJ and BUILD with the module's __dict__.
  module = _tuple(_unicode("module"), _global("mymodels", "Net"), _unicode("net.py"),
                  _unicode("class Net(nn.Module): ..."))
  parameters = _global("collections", "OrderedDict") + b")R("  # OrderedDict(), SETITEMS:
  parameters += _unicode("weight") + _tensor(_pid(12, view=b"N"), (3, 4), (4, 1)) + b"u"
  state = b"}(" + _unicode("_parameters") + parameters + b"u"
  main = _pickle(module + b"Q)\x81" + state + b"b")  # BINPERSID, NEWOBJ, the state, BUILD
  t = pickles.read(_legacy(tmp_path, main, [("0", 12, DATA.tobytes())]))
  assert t.placeholders == ("mymodels.Net",)
  assert isinstance(t.obj, pickles.Placeholder) and t.obj.name == "mymodels.Net"
  assert_exactly(t.obj.state["_parameters"]["weight"], DATA.reshape(3, 4), "module weight")
  # A subclass of torch.Tensor is not read as a tensor (only Tensor and Parameter are).
  rebuild = _global("torch._utils", "_rebuild_tensor_v2")
  args = _tuple(_pid(12) + b"Q", _int(0), _tuple(_int(12)), _tuple(_int(1)), b"\x89",
                _global("collections", "OrderedDict") + b")R")
  body = _global("torch._tensor", "_rebuild_from_type_v2") + _tuple(
    rebuild, _global("mylib", "MaskedTensor"), args, b"}") + b"R"
  t = pickles.read(_zip(tmp_path, _pickle(body), {"0": DATA.tobytes()}, "subclass.pt"))
  assert t.placeholders == ("mylib.MaskedTensor", "torch._tensor._rebuild_from_type_v2")
  assert isinstance(t.obj, pickles.Placeholder) and t.obj.args[1].name == "mylib.MaskedTensor"
  # The same with torch.Tensor as the type is a plain tensor (a tensor with attributes).
  body = body.replace(_global("mylib", "MaskedTensor"), _global("torch", "Tensor"))
  t = pickles.read(_zip(tmp_path, _pickle(body), {"0": DATA.tobytes()}, "tensor.pt"))
  assert t.placeholders == ()
  assert_exactly(t.obj, DATA, "a tensor with attributes")


def test_views_past_their_storage_and_other_damage_are_one_line_naming_the_file(tmp_path):
  raw = {"0": DATA.tobytes()}
  stored = [("0", 12, DATA.tobytes())]
  untyped = _global("torch.storage", "UntypedStorage")

  def z(name, body, storages=raw):  # a zip file whose data.pkl is the pickle of ``body``
    return _zip(tmp_path, _pickle(body), storages, name)

  def legacy(name, body, storages=stored):
    return _legacy(tmp_path, _pickle(body), storages, name)

  def tensor(numel, size, stride, offset=0, **kwargs):
    return _tensor(_pid(numel, **kwargs), size, stride, offset)

  legacy_pid = {"view": b"N"}
  cases = [  # (path, what the message says)
    (z("past.pt", tensor(12, (4, 3), (1, 4), offset=1)),
     r"reaching past its storage 0 of 12 float32 elements"),
    (z("past_scalar.pt", tensor(12, (), (), offset=12)), "reaching past its storage"),
    (z("huge_stride.pt", tensor(12, (2,), (2**31 - 1,))), "reaching past its storage"),
    (z("overlap.pt", tensor(12, (2**20, 2**10), (0, 0))), "far larger than their storages"),
    (z("short.pt", tensor(12, (12,), (1,)), {"0": raw["0"][:40]}),
     r"is truncated \(its storage 0 has 40 of its 48 bytes\)"),
    (z("missing.pt", tensor(12, (12,), (1,)), {}),
     r"is truncated \(its storage 0 \(archive/data/0\) is missing\)"),
    (z("text_pid.pt", b"P0\n"),
     "the persistent id '0', not a storage reference of torch's zip format"),
    (z("evil_pid.pt", _tuple(_unicode("evil"), _int(1)) + b"Q"),
     "not a storage reference of torch's zip format"),
    (z("legacy_pid_in_zip.pt", _pid(12, view=b"N") + b"Q"),
     "not a storage reference of torch's zip format"),
    (legacy("zip_pid_in_legacy.pt", _pid(12) + b"Q"),
     "not a storage reference of torch's legacy format"),
    (z("int_type.pt", _pid(12, storage=_int(3)) + b"Q"), "a storage of type 3"),
    (z("unknown.pt", tensor(4, (4,), (1,), storage=_global("torch", "QuantumStorage"))),
     "the storage type torch.QuantumStorage, which this reader does not know"),
    (z("float8.pt", _tensor(_pid(6, storage=untyped), (3,), (1,), rebuild="_rebuild_tensor_v3",
                            extra=_global("torch", "float8_e4m3fn"))),
     "a tensor of dtype torch.float8_e4m3fn, which this reader does not know"),
    (z("negative.pt", _pid(-1) + b"Q"), "a storage of -1 elements"),
    (z("two_dtypes.pt", _tuple(tensor(12, (12,), (1,)),
                               tensor(12, (12,), (1,), storage=_global("torch", "IntStorage")))),
     "storage 0 referenced as 12 float32 and as 12 int32 elements"),
    (z("not_a_storage.pt", _global("torch._utils", "_rebuild_tensor") + _tuple(
      b"N", _int(0), b")", b")") + b"R"), "a tensor over None, not one of the file's storages"),
    (z("deep.pt", b"]" * 5000 + b"a" * 4999), "nested too deeply"),
    (_legacy(tmp_path, _pickle(b"N"), magic=1234, name="bad_magic.pt"),
     r"is a plain pickle of an int \(no torch.save magic number\), not a PyTorch checkpoint"),
    (_legacy(tmp_path, _pickle(b"N"), protocol=1000, name="bad_protocol.pt"),
     "the protocol version 1000 after torch's magic number"),
    (legacy("legacy_past.pt", tensor(12, (13,), (1,), **legacy_pid)),
     "reaching past its storage 0 of 12"),
    (legacy("view_past.pt", tensor(12, (6,), (1,), view=_tuple(_unicode("v"), _int(8), _int(6)))),
     r"the storage view v \(6 elements from 8\) reaches past storage 0"),
    (legacy("count.pt", tensor(12, (12,), (1,), **legacy_pid), [("0", 5, DATA.tobytes())]),
     "storage 0 has 5 elements, its tensors say 12"),
    (legacy("stranger.pt", b"N", [("9", 12, DATA.tobytes())]),
     "the storage key '9', which no tensor references"),
    (legacy("unstored.pt", tensor(12, (12,), (1,), **legacy_pid), []),
     "storage 0 is referenced but not stored"),
    (legacy("legacy_short.pt", tensor(12, (12,), (1,), **legacy_pid),
            [("0", 12, DATA.tobytes()[:44])]),
     r"is truncated \(its storage 0 has 44 of its 48 bytes\)"),
  ]
  for path, pattern in cases:
    message = read_error(path)
    assert re.search(pattern, message), (path, message)
  # A name with a newline in it (STACK_GLOBAL can make one) still gives one line.
  evil = _unicode("torch") + _unicode("Evil\nStorage") + b"\x93"
  message = read_error(_zip(tmp_path, b"\x80\x04" + _tensor(_pid(4, storage=evil), (4,), (1,))
                            + b".", raw, "newline.pt"))
  assert "the storage type torch.Evil Storage, which" in message, message


# ------------------------------------------------------------------------- hostile pickles
class Reduce:
  """An object that pickles as ``func(*args)``: what a hostile checkpoint contains."""

  def __init__(self, func, args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


class WritesAFile:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return open, (self.path, "w")


def hostile_pickles(marker: str, say: str = "; echo PWNED") -> dict[str, tuple[bytes, str]]:
  """Each payload, and a global its placeholder must be named by."""
  command = f"touch {marker}{say}"
  code = f"open({marker!r}, 'w').write('pwned')" + (" and print('PWNED')" if say else "")
  c = command.encode()
  return {
    "posix.system": (pickle.dumps(Reduce(os.system, (command,)), protocol=2), "posix.system"),
    "os.system": (b"cos\nsystem\n(S'" + c + b"'\ntR.", "os.system"),
    "eval": (pickle.dumps(Reduce(eval, (code,)), protocol=2), "builtins.eval"),
    "exec": (pickle.dumps(Reduce(exec, (code,)), protocol=4), "builtins.exec"),  # STACK_GLOBAL
    "popen": (pickle.dumps(Reduce(subprocess.Popen, (["touch", marker],)), protocol=2),
              "subprocess.Popen"),
    # open pickles as io.open up to Python 3.12, _io.open from 3.13 on.
    "writes_a_file": (pickle.dumps(WritesAFile(marker), protocol=2),
                      f"{pickle.whichmodule(open, 'open')}.open"),
    # getattr(__import__('os'), 'system')(command), in protocol 0.
    "getattr": (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'" + c
                + b"'\ntR.", "builtins.getattr"),
    "newobj": (b"\x80\x02cos\nsystem\n(S'" + c + b"'\nt\x81.", "os.system"),
    "newobj_ex": (b"\x80\x04cos\nsystem\n(S'" + c + b"'\nt}S'shell'\n\x88s\x92.", "os.system"),
    "inst": (b"(S'" + c + b"'\nios\nsystem\n.", "os.system"),
    "obj": (b"(cos\nsystem\nS'" + c + b"'\no.", "os.system"),
    # BUILD, SETITEMS, APPENDS and ADDITEMS on placeholders: recorded, nothing called.
    "build_and_fill": (
      b"\x80\x04]("
      + b"cos\nsystem\n)\x81}S'__reduce__'\nS'" + c + b"'\nsb"
      + b"ccollections\ndefaultdict\n)\x81(S'k'\nS'" + c + b"'\nu"
      + b"csubprocess\nPopen\n)\x81(S'" + c + b"'\ne"
      + b"cos\nsystem\n)\x81(S'" + c + b"'\n\x90"
      + b"e.", "subprocess.Popen"),
    # A module imported for its side effect (`this` prints the Zen of Python).
    "import": (b"cthis\ns\n.", "this.s"),
    # A hostile entry beside a state_dict: the rest of the file still reads.
    "nested": (pickle.dumps({"state_dict": OrderedDict(a=1), "evil": Reduce(os.system, (command,))},
                            protocol=2), "posix.system"),
  }


def test_hostile_pickles_run_nothing_in_either_format(tmp_path, capfd, monkeypatch):
  marker = str(tmp_path / "PWNED")
  imported = "this" in sys.modules
  monkeypatch.chdir(tmp_path)
  for name, (payload, global_name) in hostile_pickles(marker).items():
    for fmt in FORMATS:
      if fmt == "zip":
        path = _zip(tmp_path, payload, name=f"{name}.pt")
      else:
        path = _legacy(tmp_path, payload, name=f"{name}_legacy.pt")
      t = pickles.read(path)
      assert not os.path.exists(marker), (name, fmt)
      assert global_name in t.placeholders, (name, fmt, t.placeholders)
      obj = t.obj
      if name == "nested":
        assert obj["state_dict"] == OrderedDict(a=1)
        obj = obj["evil"]
      if name == "build_and_fill":
        built, mapping, listing, added = obj
        command = f"touch {marker}; echo PWNED"
        assert built.name == "os.system" and built.state == {"__reduce__": command}
        assert mapping.name == "collections.defaultdict" and mapping.items == {"k": command}
        assert listing.entries == [command] and added.entries == [command]
        obj = built
      if name == "newobj_ex":
        assert obj.kwargs == {"shell": True}
      if name == "getattr":
        assert obj.callee.name == "builtins.getattr"
        assert obj.args == (f"touch {marker}; echo PWNED",)
      if name == "import":
        assert isinstance(obj, type) and issubclass(obj, pickles.Placeholder)
      else:
        assert isinstance(obj, pickles.Placeholder), (name, fmt, obj)
      assert "\n" not in repr(obj)
  out, err = capfd.readouterr()
  assert out == "" and err == ""
  assert not os.path.exists(marker)
  assert imported or "this" not in sys.modules
  assert sorted(os.listdir(tmp_path)) == sorted(  # nothing written beside the files read
    [f"{n}{s}.pt" for n in hostile_pickles(marker) for s in ("", "_legacy")]
  )


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_hostile_entry_beside_tensors_leaves_the_tensors_readable(tmp_path, capfd, fmt):
  marker = str(tmp_path / "PWNED")
  evil = b"cposix\nsystem\n(S'touch " + marker.encode() + b"; echo PWNED'\ntR"
  pid = _pid(12, view=b"N" if fmt == "legacy" else None)
  body = b"}(" + _unicode("evil") + evil + _unicode("weight") + _tensor(pid, (3, 4), (4, 1)) + b"u"
  if fmt == "zip":
    path = _zip(tmp_path, _pickle(body), {"0": DATA.tobytes()})
  else:
    path = _legacy(tmp_path, _pickle(body), [("0", 12, DATA.tobytes())])
  t = pickles.read(path)
  assert t.placeholders == ("posix.system",) and isinstance(t.obj["evil"], pickles.Placeholder)
  assert_exactly(t.obj["weight"], DATA.reshape(3, 4), "weight")
  assert not os.path.exists(marker) and capfd.readouterr() == ("", "")


def test_the_hostile_payloads_are_real(tmp_path):
  """Python's own unpickler runs each payload: the test above could fail."""
  real = ("posix.system", "os.system", "eval", "exec", "popen", "writes_a_file", "getattr",
          "inst", "obj")
  for name in real:
    marker = str(tmp_path / name)
    result = pickle.loads(hostile_pickles(marker, say="")[name][0])
    if hasattr(result, "wait"):
      result.wait()
    if hasattr(result, "close"):
      result.close()
    assert os.path.exists(marker), name


def test_a_plain_hostile_pickle_is_refused_and_runs_nothing(tmp_path, capfd):
  marker = str(tmp_path / "PWNED")
  plain = tmp_path / "plain.pkl"
  plain.write_bytes(hostile_pickles(marker)["posix.system"][0])
  message = read_error(plain)
  assert "is a plain pickle of an object of class posix.system" in message
  assert "not a PyTorch checkpoint" in message
  assert not os.path.exists(marker) and capfd.readouterr() == ("", "")


def test_copyreg_extension_codes_are_refused_even_when_cached(tmp_path):
  # An EXT code that copyreg's cache already holds skips find_class in CPython's
  # unpickler, so the reader refuses EXT opcodes outright.
  copyreg.add_extension("os", "getcwd", 240)
  try:
    payload = b"\x80\x02\x82\xf0)R."
    assert pickle.loads(payload) == os.getcwd()  # now in copyreg's cache: real os.getcwd
    for fmt in FORMATS:
      make = _zip if fmt == "zip" else _legacy
      message = read_error(make(tmp_path, payload, name=f"ext_{fmt}.pt"))
      assert "copyreg extension code (EXT1)" in message, message
  finally:
    copyreg.remove_extension("os", "getcwd", 240)


# --------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_truncated_file_is_one_line_naming_it(tmp_path, fmt):
  raw = open(fixture(f"checkpoint_{fmt}.pt"), "rb").read()
  cuts = [1, 2, 3, 10, 16, 40, 100, 300, *(int(len(raw) * f / 20) for f in range(1, 20)),
          len(raw) - 8, len(raw) - 1]
  for cut in cuts:
    path = tmp_path / f"cut_{cut}.pt"
    path.write_bytes(raw[:cut])
    message = read_error(path)
    assert f"cut_{cut}.pt is truncated (" in message and "download it again" in message, message


def test_files_that_are_not_checkpoints_are_one_line_naming_what_they_seem(tmp_path):
  def old_torch_tar(path):
    with tarfile.open(path, "w") as tar:
      for member in ("sys_info", "pickle", "storages", "tensors"):
        info = tarfile.TarInfo(member)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"\x00"))

  def other_tar(path):
    with tarfile.open(path, "w") as tar:
      info = tarfile.TarInfo("model.pth")
      tar.addfile(info, io.BytesIO(b""))

  def other_zip(path):
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("readme.txt", "hello")

  def npz(path):
    with open(path, "wb") as f:
      np.savez(f, a=np.zeros(2))

  def npy(path):
    with open(path, "wb") as f:
      np.save(f, np.zeros(3))

  raw_files = {
    "notes.txt": (b"these are my notes\n", r"is a text file \(it starts with 'these are my"),
    "page.pth": (b"<!DOCTYPE html><html><body>Quota exceeded</body></html>", "an HTML page"),
    "empty.pt": (b"", "is empty, not a PyTorch checkpoint"),
    "random.pt": (b"\xf9" + np.random.default_rng(0).bytes(4096),
                  r"is binary data that is not a pickle \(it starts with f9 "),
    "list.pkl": (pickle.dumps([1, 2, 3]), "is a plain pickle of a list"),
    "dict.pkl": (pickle.dumps({"w": np.zeros(2)}), "is a plain pickle of a dict"),
    "data.gz": (b"\x1f\x8b\x08\x00" + bytes(20), "gzip-compressed"),
    "model.safetensors": (struct.pack("<Q", 2) + b"{}", "a safetensors file"),
    "model.h5": (b"\x89HDF\r\n\x1a\n" + bytes(20), "an HDF5 file"),
  }
  made = {"old.tar": (old_torch_tar, "tar format of PyTorch < 0.4"),
          "other.tar": (other_tar, "is a tar archive"),
          "other.zip": (other_zip, "zip archive with no <name>/data.pkl"),
          "arrays.npz": (npz, "a zip archive of .npy files"),
          "array.npy": (npy, "is a NumPy .npy file, not a PyTorch checkpoint")}
  cases = {}
  for name, (raw, pattern) in raw_files.items():
    (tmp_path / name).write_bytes(raw)
    cases[name] = pattern
  for name, (make, pattern) in made.items():
    make(str(tmp_path / name))
    cases[name] = pattern
  for name, pattern in cases.items():
    message = read_error(tmp_path / name)
    assert re.search(pattern, message), (name, message)
  assert "does not exist" in read_error(tmp_path / "nope.pt")
  assert "is a directory" in read_error(tmp_path)


def test_read_accepts_a_path_object_and_imports_no_torch():
  import pathlib

  t = pickles.read(pathlib.Path(fixture("checkpoint_zip.pt")))
  assert t.format == "zip"
  assert "torch" not in sys.modules and "dill" not in sys.modules
