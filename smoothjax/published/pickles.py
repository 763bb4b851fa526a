"""PyTorch checkpoint files read without PyTorch and without running any of their code.

``torch.save`` writes a pickle, and unpickling runs whatever functions the pickle names:
a checkpoint from the internet can delete files or open a shell the moment it is loaded
(PyTorch 2.6 made ``weights_only=True`` the default for that reason). :func:`read`
unpickles with an allow-list: plain containers and numbers, ``OrderedDict``, tensors and
their storages (rebuilt here, over NumPy), ``torch.Size``, NumPy scalars and arrays (from
their bytes) and a few harmless builtins. Every other global (``os.system``,
``builtins.eval``, an optimizer class, ``argparse.Namespace``, a function pickled by
``dill``) becomes an inert :class:`Placeholder` that records what the pickle gave it and
is never called, so a checkpoint's ``state_dict`` reads even when other entries of the
file cannot. Python's unpickler resolves every global, whichever opcode names it
(GLOBAL, STACK_GLOBAL, INST, OBJ, the copyreg EXT codes), through ``find_class``, which
is where the allow-list sits; persistent ids, PyTorch's references to storages, go
through ``persistent_load`` and are accepted only in PyTorch's forms.

Both formats are read:

* the zip archive of PyTorch >= 1.6: ``<name>/data.pkl``, the storages as
  ``<name>/data/<key>``, ``<name>/byteorder``;
* the legacy stream (2019-2020 files, ``_use_new_zipfile_serialization=False``): the
  magic number, the protocol version 1001, a dict of system information, the pickle,
  the list of storage keys, then each storage as an 8-byte element count and its bytes.

Tensors come out as ordinary C-contiguous NumPy arrays of their dtype, shape, strides
and storage offset (views into one storage included; bfloat16 as float32, exactly).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from smoothjax.errors import InputError, one_line

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_MAX_TENSOR_BYTES = 1 << 36  # 64 GiB: a tensor beyond this is not a model's

# torch's storage classes and dtypes, as the pickles name them.
_STORAGES = {
  "DoubleStorage": "float64",
  "FloatStorage": "float32",
  "HalfStorage": "float16",
  "BFloat16Storage": "bfloat16",
  "LongStorage": "int64",
  "IntStorage": "int32",
  "ShortStorage": "int16",
  "CharStorage": "int8",
  "ByteStorage": "uint8",
  "BoolStorage": "bool",
  "ComplexFloatStorage": "complex64",
  "ComplexDoubleStorage": "complex128",
  "UntypedStorage": "uint8",
}
_DTYPES = {
  "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
  "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
  "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
  "int8": "int8", "uint8": "uint8", "bool": "bool", "complex64": "complex64",
  "complex128": "complex128",
}


class Placeholder:
  """An inert stand-in for a global outside the allow-list; it never calls anything.

  Attributes:
    name: ``module.qualname`` of the global the pickle named.
    args: what the pickle called or constructed it with.
    state: what the pickle's BUILD gave it (an object's ``__dict__`` or state).
    items: what was set into it as a mapping; ``entries``: what was appended.
  """

  name = "?"

  def __new__(cls, *args, **kwargs):
    self = object.__new__(cls)
    self.args, self.kwargs, self.state, self.items, self.entries = args, kwargs, None, {}, []
    return self

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.entries.append(value)

  def extend(self, values):
    self.entries.extend(values)

  def __repr__(self) -> str:
    return f"<placeholder {self.name}>"


def _placeholder(name: str) -> type:
  return type("Placeholder", (Placeholder,), {"name": name, "__module__": __name__})


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: str


@dataclasses.dataclass(frozen=True)
class _DType:
  dtype: str


class _Storage:
  """A storage's raw elements (bfloat16 as uint16), read now (zip) or later (legacy)."""

  def __init__(self, dtype: str, numel: int, key: str):
    self.dtype, self.numel, self.key = dtype, int(numel), key
    self.data: np.ndarray | None = None

  @property
  def raw_dtype(self) -> np.dtype:
    return np.dtype(np.uint16) if self.dtype == "bfloat16" else np.dtype(self.dtype)


@dataclasses.dataclass
class _Tensor:
  """A tensor to take out of its storage once the storages are read."""

  storage: Any
  offset: int
  size: tuple
  stride: tuple
  dtype: str | None = None


def _int_tuple(value, what: str) -> tuple[int, ...]:
  if not isinstance(value, tuple | list) or not all(
    isinstance(v, int) and not isinstance(v, bool) for v in value
  ):
    raise ValueError(f"a tensor's {what} is {value!r}, not a tuple of integers")
  return tuple(int(v) for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
  if not isinstance(storage, _Storage):
    raise ValueError(f"a tensor's storage is {storage!r}, not one of the file's storages")
  if not isinstance(storage_offset, int) or storage_offset < 0:
    raise ValueError(f"a tensor's storage offset is {storage_offset!r}")
  return _Tensor(storage, storage_offset, _int_tuple(size, "size"), _int_tuple(stride, "stride"))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *rest):
  tensor = _rebuild_tensor(storage, storage_offset, size, stride)
  if isinstance(dtype, _DType):
    tensor.dtype = dtype.dtype
  return tensor


def _rebuild_parameter(data, *rest):
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  if func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter):
    return _placeholder("torch._tensor._rebuild_from_type_v2")(func, new_type, args, state)
  return func(*args)


class _NumpyDType:
  """``numpy.dtype(name, align, copy)`` as numpy pickles it, then its byte order (BUILD)."""

  def __init__(self, name, *args):
    if not isinstance(name, str):
      raise ValueError(f"a NumPy dtype named {name!r}")
    self.name, self.order = name, "="

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
      self.order = state[1]

  def get(self) -> np.dtype:
    dtype = np.dtype(self.name)
    if dtype.hasobject:
      raise ValueError("a NumPy value of object dtype (it would be unpickled)")
    return dtype.newbyteorder(self.order) if self.order in "<>" else dtype


def _bytes(data) -> bytes:
  return data.encode("latin1") if isinstance(data, str) else bytes(data)


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, _NumpyDType):
    raise ValueError(f"a NumPy scalar of dtype {dtype!r}")
  return np.frombuffer(_bytes(data), dtype=dtype.get(), count=1)[0]


class _NumpyArray:
  """``numpy.core.multiarray._reconstruct`` and the BUILD that gives it its bytes."""

  def __init__(self, *args):
    self.array = None

  def __setstate__(self, state):
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, _NumpyDType):
      raise ValueError(f"a NumPy array of dtype {dtype!r}")
    if isinstance(raw, list):
      raise ValueError("a NumPy array of object dtype (it would be unpickled)")
    shape = _int_tuple(shape, "shape")
    flat = np.frombuffer(_bytes(raw), dtype=dtype.get())
    self.array = flat.reshape(shape, order="F" if fortran else "C").copy()


def _numpy_frombuffer(buffer, dtype, shape, order):
  if not isinstance(dtype, _NumpyDType) and not isinstance(dtype, np.dtype):
    raise ValueError(f"a NumPy array of dtype {dtype!r}")
  dtype = dtype.get() if isinstance(dtype, _NumpyDType) else dtype
  flat = np.frombuffer(_bytes(buffer), dtype=dtype)
  return flat.reshape(_int_tuple(shape, "shape"), order=order).copy()


def _codecs_encode(obj, encoding="utf-8", *rest):
  if isinstance(obj, str) and encoding in ("latin1", "latin-1"):
    return obj.encode("latin1")
  raise ValueError(f"_codecs.encode with encoding {encoding!r}")


def _bytearray(data=b""):
  if not isinstance(data, bytes | bytearray | str):
    raise ValueError("bytearray of something other than bytes")
  return bytearray(_bytes(data))


def _device(*args):
  return "device(" + ", ".join(map(str, args)) + ")"


def _size(*args):
  return tuple(*args)


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
  ("torch", "Size"): _size,
  ("torch", "device"): _device,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("builtins", "complex"): complex,
  ("builtins", "slice"): slice,
  ("builtins", "bytearray"): _bytearray,
  ("__builtin__", "set"): set,
  ("_codecs", "encode"): _codecs_encode,
  ("numpy", "dtype"): _NumpyDType,
  ("numpy", "ndarray"): np.ndarray,  # only a marker: _reconstruct never calls it
  ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
  ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
}
for _module in _NUMPY_MODULES:
  _ALLOWED[(_module, "scalar")] = _numpy_scalar
  _ALLOWED[(_module, "_reconstruct")] = _NumpyArray


class _Unpickler(pickle.Unpickler):
  """The allow-list unpickler; ``storages(pid)`` answers PyTorch's persistent ids."""

  def __init__(self, file, storages):
    super().__init__(file, encoding="latin1")
    self._storages = storages
    self.placeholders: set[str] = set()

  def find_class(self, module: str, name: str):
    # Every global of the pickle arrives here (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*):
    # nothing is imported, and only the allow-list maps to something callable.
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGES:
      return _StorageType(_STORAGES[name])
    if module == "torch" and name in _DTYPES:
      return _DType(_DTYPES[name])
    self.placeholders.add(f"{module}.{name}")
    return _placeholder(f"{module}.{name}")

  def persistent_load(self, pid):
    return self._storages(pid)


def _check_storage_id(pid, length: int):
  if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
    raise ValueError(f"a persistent id {pid!r} that is not one of PyTorch's storages")
  storage_type, key, numel = pid[1], pid[2], pid[4]
  if not isinstance(storage_type, _StorageType):
    raise ValueError(f"a storage of unknown type {storage_type!r}")
  if not isinstance(numel, int) or numel < 0:
    raise ValueError(f"a storage of {numel!r} elements")
  return storage_type.dtype, str(key), int(numel)


def _materialize(obj, memo=None):
  """``obj`` with every tensor taken out of its storage, containers kept."""
  memo = {} if memo is None else memo
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _Tensor):
    out = _tensor_array(obj)
  elif isinstance(obj, _NumpyArray):
    out = obj.array
  elif isinstance(obj, dict):
    memo[id(obj)] = obj
    for k in list(obj):
      obj[k] = _materialize(obj[k], memo)
    return obj
  elif isinstance(obj, list):
    memo[id(obj)] = obj
    obj[:] = [_materialize(v, memo) for v in obj]
    return obj
  elif isinstance(obj, tuple):
    out = tuple(_materialize(v, memo) for v in obj)
  elif isinstance(obj, Placeholder):
    memo[id(obj)] = obj
    obj.args = _materialize(obj.args, memo)
    obj.state = _materialize(obj.state, memo)
    obj.items = _materialize(obj.items, memo)
    obj.entries = _materialize(obj.entries, memo)
    return obj
  else:
    return obj
  memo[id(obj)] = out
  return out


def _tensor_array(t: _Tensor) -> np.ndarray:
  storage = t.storage
  if storage.data is None:
    raise ValueError(f"storage {storage.key} was never read")
  if len(t.size) != len(t.stride) or any(d < 0 for d in t.size) or any(s < 0 for s in t.stride):
    raise ValueError(f"a tensor of size {t.size} and stride {t.stride}")
  data = storage.data
  if t.dtype is not None and t.dtype != storage.dtype:
    raise ValueError(f"a {t.dtype} tensor on a {storage.dtype} storage")
  numel = int(np.prod(t.size, dtype=np.int64))
  if numel:
    last = t.offset + sum((d - 1) * s for d, s in zip(t.size, t.stride, strict=True))
    if last >= data.size:
      raise ValueError(
        f"a tensor (offset {t.offset}, size {t.size}, stride {t.stride}) reaching past its "
        f"storage of {data.size} elements"
      )
  if numel * data.itemsize > _MAX_TENSOR_BYTES:
    raise ValueError(f"a tensor of {numel:,} elements")
  if not numel:
    out = np.zeros(t.size, data.dtype)
  else:
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(
      data[t.offset :], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    out = np.array(view, copy=True, order="C")
  if storage.dtype == "bfloat16":
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out.astype(out.dtype.newbyteorder("="), copy=False)


@dataclasses.dataclass(frozen=True)
class TorchFile:
  """A checkpoint as read: its object, its format and what could not be read."""

  obj: Any  # the unpickled object; tensors are numpy arrays
  format: str  # "zip" (PyTorch >= 1.6) or "legacy"
  placeholders: tuple[str, ...]  # "module.qualname" of every global neutralised


def _read_zip(path: str, archive: zipfile.ZipFile):
  names = archive.namelist()
  pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
  pickles = [n for n in pickles if n.count("/") <= 1]
  if len(pickles) != 1:
    raise InputError(
      f"{path} is a zip archive but not a PyTorch checkpoint (it has "
      f"{'no' if not pickles else len(pickles)} data.pkl); pass a file written by torch.save"
    )
  prefix = pickles[0][: -len("data.pkl")]
  order = "little"
  if prefix + "byteorder" in names:
    order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if order not in ("little", "big"):
      raise ValueError(f"a byte order {order!r}")
  storages: dict[str, _Storage] = {}

  def load(pid):
    dtype, key, numel = _check_storage_id(pid, 5)
    if key not in storages:
      storage = _Storage(dtype, numel, key)
      member = f"{prefix}data/{key}"
      if member not in names:
        raise EOFError(f"storage {key} is missing from the archive")
      raw = archive.read(member)
      want = numel * storage.raw_dtype.itemsize
      if len(raw) < want:
        raise EOFError(f"storage {key} has {len(raw)} of its {want} bytes")
      dt = storage.raw_dtype.newbyteorder("<" if order == "little" else ">")
      storage.data = np.frombuffer(raw, dtype=dt, count=numel)
      storages[key] = storage
    return storages[key]

  unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), load)
  obj = unpickler.load()
  return obj, unpickler.placeholders


def _read_legacy(path: str, f):
  head = f.read(8)
  f.seek(0)
  if head.startswith(b"\x93NUMPY"):
    raise InputError(
      f"{path} is a NumPy .npy file, not a PyTorch checkpoint; pass a torch.save file"
    )
  if not head:
    raise InputError(f"{path} is empty; pass a PyTorch checkpoint (download it again?)")
  if _looks_like_tar(f):
    raise InputError(
      f"{path} is in the tar format of PyTorch before 0.4; load it with an old PyTorch and "
      "save it again with torch.save"
    )

  def no_storages(pid):
    raise ValueError(f"a persistent id {pid!r} before the checkpoint's main pickle")

  header = _Unpickler(f, no_storages)
  try:
    magic = header.load()
  except Exception as e:
    raise InputError(
      f"{path} is not a PyTorch checkpoint (it does not start with a pickle: "
      f"{one_line(e)}); pass a file written by torch.save"
    ) from None
  if magic != MAGIC_NUMBER:
    raise InputError(
      f"{path} is a pickle of a {type(magic).__name__}, not a PyTorch checkpoint (no torch.save "
      "magic number); pass a file written by torch.save"
    )
  protocol = header.load()
  if protocol != PROTOCOL_VERSION:
    raise InputError(f"{path} has PyTorch protocol version {protocol!r}, not {PROTOCOL_VERSION}")
  sys_info = header.load()
  little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
  storages: dict[str, _Storage] = {}
  views: dict[str, _Storage] = {}

  def load(pid):
    if isinstance(pid, tuple) and pid and pid[0] == "module":
      return _placeholder("torch.nn.Module source")(*pid[1:2])
    dtype, key, numel = _check_storage_id(pid, 6)
    if key not in storages:
      storages[key] = _Storage(dtype, numel, key)
    root = storages[key]
    view = pid[5]
    if view is None:
      return root
    view_key, offset, size = view
    if str(view_key) not in views:
      v = _Storage(dtype, size, str(view_key))
      v.root, v.offset = root, int(offset)
      views[str(view_key)] = v
    return views[str(view_key)]

  unpickler = _Unpickler(f, load)
  obj = unpickler.load()
  keys = _Unpickler(f, no_storages).load()
  if not isinstance(keys, list):
    raise ValueError(f"a storage key list of type {type(keys).__name__}")
  for key in keys:
    key = str(key)
    if key not in storages:
      raise ValueError(f"storage {key} listed but never used")
    storage = storages[key]
    count_bytes = f.read(8)
    if len(count_bytes) < 8:
      raise EOFError(f"storage {key} is missing")
    (count,) = struct.unpack("<q" if little else ">q", count_bytes)
    if count != storage.numel:
      raise ValueError(f"storage {key} has {count} elements, its tensors say {storage.numel}")
    want = count * storage.raw_dtype.itemsize
    raw = f.read(want)
    if len(raw) < want:
      raise EOFError(f"storage {key} has {len(raw)} of its {want} bytes")
    dt = storage.raw_dtype.newbyteorder("<" if little else ">")
    storage.data = np.frombuffer(raw, dtype=dt, count=count)
  for v in views.values():
    if v.root.data is None:
      raise ValueError(f"storage {v.root.key} was never read")
    if v.offset < 0 or v.offset + v.numel > v.root.data.size:
      raise ValueError(f"a storage view past storage {v.root.key}")
    v.data = v.root.data[v.offset : v.offset + v.numel]
  return obj, unpickler.placeholders


def _looks_like_tar(f) -> bool:
  start = f.tell()
  block = f.read(512)
  f.seek(start)
  return len(block) == 512 and block[257:262] == b"ustar"


def read(path: str) -> TorchFile:
  """Reads the PyTorch checkpoint at ``path``: no torch, none of the file's code run.

  Returns:
    The :class:`TorchFile`: the object (tensors as NumPy arrays), the format, and the
    globals the allow-list turned into placeholders.

  Raises:
    InputError: ``path`` cannot be read, is not a PyTorch checkpoint, or is truncated or
      damaged; one line naming the file.
  """
  if not isinstance(path, str | os.PathLike):
    raise InputError(f"a checkpoint path must be a string, got {path!r}")
  path = os.fspath(path)
  if not os.path.isfile(path):
    what = "a directory" if os.path.isdir(path) else "not found"
    raise InputError(f"{path}: {what}; pass the checkpoint file (.pth.tar, .pt)")
  try:
    with open(path, "rb") as f:
      if zipfile.is_zipfile(f):
        f.seek(0)
        fmt = "zip"
        with zipfile.ZipFile(f) as archive:
          obj, placeholders = _read_zip(path, archive)
          obj = _materialize(obj)
      else:
        f.seek(0)
        fmt = "legacy"
        obj, placeholders = _read_legacy(path, f)
        obj = _materialize(obj)
  except InputError:
    raise
  except OSError as e:
    raise InputError(f"cannot read {path} ({one_line(e)})") from None
  except (EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
    raise InputError(
      f"{path} is truncated or damaged ({one_line(e) or 'it ends early'}); download it again"
    ) from None
  except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
          struct.error, RecursionError, MemoryError, UnicodeDecodeError) as e:
    text = one_line(e)
    if "truncated" in text or "ran out of input" in text.lower():
      raise InputError(f"{path} is truncated ({text}); download it again") from None
    raise InputError(
      f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {text}); pass a "
      "file written by torch.save"
    ) from None
  return TorchFile(obj=obj, format=fmt, placeholders=tuple(sorted(placeholders)))
