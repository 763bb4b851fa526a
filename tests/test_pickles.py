"""PyTorch checkpoints read without PyTorch, and without running anything they name.

The fixtures in tests/fixtures/torch/reader were written by real PyTorch 2.13
(tools/torch_fixtures.py); the hostile, truncated and hand-made files are built here.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
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


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_tensor_reads_exactly_views_offsets_and_strides_included(fmt):
  t = pickles.read(fixture(f"tensors_{fmt}.pt"))
  assert t.format == fmt
  expected = np.load(fixture("tensors.npz"))
  obj = t.obj
  for key in expected.files:
    want = expected[key]
    got = obj["state_dict"][key[len("state_dict/"):]] if key.startswith("state_dict/") else obj[key]
    assert isinstance(got, np.ndarray) and got.flags.c_contiguous, key
    assert got.dtype == want.dtype and got.shape == want.shape, (key, got.dtype, got.shape)
    np.testing.assert_array_equal(got, want, err_msg=key)
  assert obj["bfloat16"].dtype == np.float32  # bfloat16, exactly, as float32
  assert obj["scalar"].shape == () and obj["scalar"] == 3.5
  # The state_dict keeps its type and order; num_batches_tracked included.
  assert isinstance(obj["state_dict"], OrderedDict)
  assert list(obj["state_dict"])[:3] == ["0.weight", "0.bias", "1.weight"]
  assert "1.num_batches_tracked" in obj["state_dict"]
  # Plain values, containers and NumPy values come through; torch.Size is a tuple.
  assert obj["nested"][:4] == [1, 2.5, "text", None] and obj["nested"][5] == {"k": b"bytes"}
  assert isinstance(obj["nested"][4], tuple) and obj["nested"][4][0].dtype == np.int8
  assert obj["numpy_scalar"] == 0.125 and obj["numpy_scalar"].dtype == np.float64
  np.testing.assert_array_equal(obj["numpy_array"], np.arange(6, dtype=np.int16).reshape(2, 3))
  assert obj["size"] == (3, 4)
  assert obj["optimizer"]["param_groups"][0]["momentum"] == 0.9
  # argparse.Namespace is not on the allow-list: an inert placeholder holding its fields.
  assert t.placeholders == ("argparse.Namespace",)
  assert isinstance(obj["namespace"], pickles.Placeholder)
  assert obj["namespace"].state == {"arch": "cifar_resnet110", "lr": 0.1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_dill_pickled_function_is_a_placeholder_and_the_state_dict_reads(fmt):
  t = pickles.read(fixture(f"dill_{fmt}.pt"))
  assert "dill._dill._create_function" in t.placeholders
  assert isinstance(t.obj["schedule"], pickles.Placeholder) and t.obj["epoch"] == 3
  assert t.obj["state_dict"]["3.weight"].shape == (3, 2)


# ------------------------------------------------------------------------ hand-made files
def _unicode(text: str) -> bytes:
  raw = text.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
  return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _tensor_pickle(numel: int, size, stride, offset=0, storage=b"ctorch\nFloatStorage\n",
                   pid=None) -> bytes:
  """A protocol-2 pickle of one tensor on storage '0', as torch writes it (zip format)."""
  if pid is None:
    pid = _tuple(_unicode("storage"), storage, _unicode("0"), _unicode("cpu"), _int(numel))
  return (
    b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
    + _tuple(
      pid + b"Q", _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
      b"\x89", b"ccollections\nOrderedDict\n)R",
    )
    + b"R."
  )


def _zip(tmp_path, data_pkl: bytes, storages=None, name="made.pt") -> str:
  path = str(tmp_path / name)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data_pkl)
    z.writestr("archive/byteorder", "little")
    for key, raw in (storages or {}).items():
      z.writestr(f"archive/data/{key}", raw)
  return path


def _legacy(tmp_path, main: bytes, storages=(), name="made_legacy.pt") -> str:
  """The legacy stream: magic, protocol, system info, the pickle, keys, raw storages."""
  out = io.BytesIO()
  for value in (pickles.MAGIC_NUMBER, pickles.PROTOCOL_VERSION, {"little_endian": True}):
    pickle.dump(value, out, protocol=2)
  out.write(main)
  pickle.dump([key for key, _, _ in storages], out, protocol=2)
  for _, count, raw in storages:
    out.write(struct.pack("<q", count) + raw)
  path = str(tmp_path / name)
  with open(path, "wb") as f:
    f.write(out.getvalue())
  return path


def test_hand_made_files_read_and_a_view_past_its_storage_is_refused(tmp_path):
  data = np.arange(12, dtype=np.float32)
  # A transposed 3x4 view at offset 0: what the builder makes is what torch would.
  path = _zip(tmp_path, _tensor_pickle(12, (4, 3), (1, 4)), {"0": data.tobytes()})
  np.testing.assert_array_equal(pickles.read(path).obj, data.reshape(3, 4).T)
  past = _zip(tmp_path, _tensor_pickle(12, (4, 3), (1, 4), offset=1), {"0": data.tobytes()},
              "past.pt")
  with pytest.raises(InputError, match=r"past\.pt .*reaching past its storage of 12"):
    pickles.read(past)
  short = _zip(tmp_path, _tensor_pickle(12, (12,), (1,)), {"0": data.tobytes()[:40]}, "short.pt")
  with pytest.raises(InputError, match=r"short\.pt is truncated .*40 of its 48 bytes"):
    pickles.read(short)
  missing = _zip(tmp_path, _tensor_pickle(12, (12,), (1,)), {}, "missing.pt")
  with pytest.raises(InputError, match=r"missing\.pt is truncated .*storage 0 is missing"):
    pickles.read(missing)
  weird = _zip(tmp_path, _tensor_pickle(4, (4,), (1,), pid=_tuple(_unicode("evil"), _int(1))),
               {"0": data.tobytes()}, "weird.pt")
  with pytest.raises(InputError, match=r"weird\.pt .*not one of PyTorch's storages"):
    pickles.read(weird)
  unknown = _zip(tmp_path, _tensor_pickle(4, (4,), (1,), storage=b"ctorch\nQuantumStorage\n"),
                 {"0": data.tobytes()}, "unknown.pt")
  with pytest.raises(InputError, match=r"unknown\.pt .*storage of unknown type"):
    pickles.read(unknown)
  # The legacy stream: a view storage (offset 2, 6 elements) of a root of 12.
  pid = _tuple(_unicode("storage"), b"ctorch\nFloatStorage\n", _unicode("r"), _unicode("cpu"),
               _int(12), _tuple(_unicode("v"), _int(2), _int(6)))
  main = _tensor_pickle(6, (2, 3), (3, 1), pid=pid)
  path = _legacy(tmp_path, main, [("r", 12, data.tobytes())])
  np.testing.assert_array_equal(pickles.read(path).obj, data[2:8].reshape(2, 3))
  path = _legacy(tmp_path, main, [("r", 12, data.tobytes()[:20])], "cut.pt")
  with pytest.raises(InputError, match=r"cut\.pt is truncated"):
    pickles.read(path)


# ---------------------------------------------------------------------------- hostile files
def _hostile_pickles(marker: str) -> dict[str, bytes]:
  command = f"touch {marker}"
  code = f"open({marker!r}, 'w').write('pwned')"

  class Reduce:
    def __init__(self, func, args):
      self.func, self.args = func, args

    def __reduce__(self):
      return self.func, self.args

  return {
    "os.system": pickle.dumps(Reduce(os.system, (command,)), protocol=2),
    "eval": pickle.dumps(Reduce(eval, (code,)), protocol=2),
    "exec": pickle.dumps(Reduce(exec, (code,)), protocol=4),
    "popen": pickle.dumps(Reduce(subprocess.Popen, (["touch", marker],)), protocol=2),
    "open": pickle.dumps(Reduce(open, (marker, "w")), protocol=2),
    "posix.system": b"cposix\nsystem\n(S'" + command.encode() + b"'\ntR.",
    # getattr(__import__('os'), 'system')(command), in protocol 0.
    "getattr": (
      b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'"
      + command.encode() + b"'\ntR."
    ),
    # A nested one inside a state_dict-like dict: the rest must still read.
    "nested": pickle.dumps(
      {"state_dict": OrderedDict(a=1), "evil": Reduce(os.system, (command,))}, protocol=2
    ),
  }


def test_hostile_pickles_run_nothing_in_either_format(tmp_path, capfd):
  marker = str(tmp_path / "PWNED")
  for name, payload in _hostile_pickles(marker).items():
    for fmt in FORMATS:
      if fmt == "zip":
        path = _zip(tmp_path, payload, name=f"{name}.pt")
      else:
        path = _legacy(tmp_path, payload, name=f"{name}_legacy.pt")
      t = pickles.read(path)
      assert not os.path.exists(marker), (name, fmt)
      assert t.placeholders, (name, fmt)
      obj = t.obj
      if name == "nested":
        assert obj["state_dict"] == OrderedDict(a=1)
        obj = obj["evil"]
      assert isinstance(obj, pickles.Placeholder), (name, fmt, obj)
  out, err = capfd.readouterr()
  assert out == "" and err == ""
  assert not os.path.exists(marker)
  # A plain pickle file (not torch.save's) is refused, and its global is not run either.
  plain = tmp_path / "plain.pkl"
  plain.write_bytes(_hostile_pickles(marker)["os.system"])
  with pytest.raises(InputError, match="not a PyTorch checkpoint"):
    pickles.read(str(plain))
  assert not os.path.exists(marker)
  # The payloads are real: Python's own unpickler runs them (here, harmlessly in tmp_path).
  pickle.loads(_hostile_pickles(marker)["getattr"])
  assert os.path.exists(marker)


# --------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_truncated_file_is_one_line_naming_it(tmp_path, fmt):
  raw = open(fixture(f"tensors_{fmt}.pt"), "rb").read()
  for fraction in (0.3, 0.6, 0.95):
    path = tmp_path / f"cut_{fraction}.pt"
    path.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(InputError) as e:
      pickles.read(str(path))
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "truncated" in message, message
  path = tmp_path / "one_short.pt"
  path.write_bytes(raw[:-1])
  with pytest.raises(InputError, match="truncated|damaged"):
    pickles.read(str(path))


def test_files_that_are_not_checkpoints_are_one_line_naming_them(tmp_path):
  cases = {
    "notes.txt": (b"these are my notes\n", "not a PyTorch checkpoint"),
    "empty.pt": (b"", "is empty"),
    "random.pt": (np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint"),
    "pickled_list.pt": (pickle.dumps([1, 2, 3]), "pickle of a list"),
  }
  np.save(tmp_path / "array.npy", np.zeros(3))
  for name, (raw, _) in cases.items():
    (tmp_path / name).write_bytes(raw)
  cases["array.npy"] = (None, "NumPy .npy file")
  zipped = tmp_path / "other.zip"
  with zipfile.ZipFile(zipped, "w") as z:
    z.writestr("readme.txt", "hello")
  cases["other.zip"] = (None, "zip archive but not a PyTorch checkpoint")
  for name, (_, pattern) in cases.items():
    with pytest.raises(InputError) as e:
      pickles.read(str(tmp_path / name))
    message = str(e.value)
    assert "\n" not in message and name in message and pattern in message, (name, message)
  with pytest.raises(InputError, match="not found"):
    pickles.read(str(tmp_path / "nope.pt"))
  with pytest.raises(InputError, match="a directory"):
    pickles.read(str(tmp_path))
