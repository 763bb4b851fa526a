"""PyTorch checkpoint files read without PyTorch and without running any of their code.

``torch.save`` writes a pickle, and unpickling calls whatever functions the pickle names:
a checkpoint from the internet can delete files or open a shell the moment it is loaded.
:func:`read` unpickles with an allow-list instead. Plain containers and numbers,
``OrderedDict``, tensors and their storages (rebuilt here, over NumPy), ``torch.Size``,
``torch.device`` (as a string), torch dtypes (as strings), NumPy scalars, dtypes and
arrays (from their bytes, also as dill writes them) and a few harmless builtins are
read; every other global
(``os.system``, ``builtins.eval``, an optimizer class, ``argparse.Namespace``, a function
pickled by ``dill``) becomes an inert :class:`Placeholder` that records what the pickle
gave it and never calls anything. So a checkpoint's ``state_dict`` reads even when other
entries of the file cannot, and :attr:`TorchFile.placeholders` says which globals were
neutralised.

Both formats of ``torch.save`` are read:

* the zip archive of PyTorch >= 1.6: ``<name>/data.pkl``, each storage's bytes in
  ``<name>/data/<key>``, ``<name>/byteorder`` (``little`` when absent);
* the legacy stream (``_use_new_zipfile_serialization=False``, the files of 2019-2020):
  pickles of the magic number, the protocol version 1001 and a dict of system
  information, the main pickle, a pickle of the storage keys, then each storage as an
  8-byte little-endian element count and its bytes (little-endian whatever the machine:
  PyTorch converts when it writes). The tar files of PyTorch < 0.4 are refused.

Tensors come out as ordinary C-contiguous NumPy arrays of their dtype and shape, taken
from their storage with its offset and strides (views into one storage included,
bfloat16 as float32, exactly); a view that reaches past its storage is an error, never a
read out of bounds. Nothing is written to disk, and every problem is an
:class:`~smoothjax.errors.InputError` of one line that names the file.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import functools
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import tarfile
import threading
import zipfile
from typing import Any

import numpy as np

from smoothjax.errors import InputError, one_line

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy torch.save file
PROTOCOL_VERSION = 1001  # its second
_MAGIC_PICKLE = pickle.dumps(MAGIC_NUMBER, protocol=2)  # how torch.save writes the first

# torch's storage classes (GLOBAL "torch FloatStorage", ...) and the dtypes of their elements.
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
  "UntypedStorage": "uint8",  # torch 2's storage of bytes (for uint16 tensors, ...)
}
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")
# torch's dtypes (GLOBAL "torch float32"), as _rebuild_tensor_v3 and some states name them.
_TORCH_DTYPES = {
  "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
  "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
  "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
  "int8": "int8", "uint8": "uint8", "bool": "bool", "complex64": "complex64",
  "cfloat": "complex64", "complex128": "complex128", "cdouble": "complex128",
  "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
}
# How each dtype's elements are stored: bfloat16 as its 16 bits, bool as bytes.
_RAW = {"bfloat16": "u2", "bool": "u1"}
# Overlapping views (a stride of 0) can make tensors larger than the storages they read;
# beyond this many bytes in all, the file is refused rather than memory exhausted.
_OVERLAP_BYTES = 1 << 28


class _NotACheckpoint(Exception):
  """The file is something else: ``str(e)`` says what it seems to be."""


class _Truncated(Exception):
  """The file ends early, or a part of it is missing."""


class _Damaged(Exception):
  """The file is a checkpoint's shape, but something in it is wrong or unsupported."""


# --- placeholders -----------------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 2, 4, 4, 4
_REPR.maxstring, _REPR.maxother = 40, 60
_REPR_DEPTH = threading.local()


class _PlaceholderType(type):
  def __repr__(cls) -> str:
    return f"<Placeholder class {cls.name}>"


class Placeholder(metaclass=_PlaceholderType):
  """An inert stand-in for a global outside the allow-list: it records, it never calls.

  :func:`read` makes one subclass per global (``issubclass(cls, Placeholder)``, with
  ``cls.name`` the global's name); the pickle then calls, constructs, builds and fills it
  as it would the real thing (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ, BUILD, APPEND(S),
  SETITEM(S), ADDITEMS), and each of those only stores what it was given.

  Attributes:
    name: ``"module.qualname"`` of the global the pickle named (``"argparse.Namespace"``).
    args: the positional arguments it was called or constructed with.
    kwargs: the keyword arguments (NEWOBJ_EX only; usually empty).
    state: what BUILD gave it (an object's ``__dict__``, or its ``__getstate__``), or None.
    items: what SETITEM(S) put into it, as a dict.
    entries: what APPEND(S) and ADDITEMS gave it, as a list.
    callee: when this placeholder is what calling another one returned (``getattr(x,
      'y')(...)``), that one; otherwise None.
  """

  name = "?"

  def __new__(cls, *args, **kwargs):
    self = object.__new__(cls)
    self.args, self.kwargs, self.state = args, kwargs, None
    self.items, self.entries, self.callee = {}, [], None
    return self

  def __init__(self, *args, **kwargs):
    pass  # REDUCE and INST call the class; __new__ has recorded the arguments already

  def __call__(self, *args, **kwargs):
    result = type(self)(*args, **kwargs)
    result.callee = self
    return result

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.entries.append(value)

  def extend(self, values):
    self.entries.extend(values)

  def add(self, value):
    self.entries.append(value)

  def __repr__(self) -> str:
    depth = getattr(_REPR_DEPTH, "value", 0)
    if depth > 2:  # placeholders inside placeholders (or a cycle): a bounded text
      return f"<Placeholder {self.name} ...>"
    _REPR_DEPTH.value = depth + 1
    try:
      calls, link = [], self
      while link is not None and len(calls) < 4:  # getattr(x, 'y')(...) and the like
        args = [_REPR.repr(a) for a in link.args]
        args += [f"{k}={_REPR.repr(v)}" for k, v in link.kwargs.items()]
        calls.append(f"({', '.join(args)})")
        link = link.callee
      text = self.name + ("" if link is None else "(...)") + "".join(reversed(calls))
      if self.state is not None:
        text += f" state={_REPR.repr(self.state)}"
      if self.items:
        text += f" items={_REPR.repr(self.items)}"
      if self.entries:
        text += f" entries={_REPR.repr(self.entries)}"
      return f"<Placeholder {text}>"
    finally:
      _REPR_DEPTH.value = depth


# --- what the allow-list maps to ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Marker:
  """A global read as a name only: a storage type, a torch dtype, ``torch.Tensor``."""

  text: str  # what it becomes in the result, e.g. "torch.FloatStorage"
  dtype: str | None = None  # the dtype of a storage type or a torch dtype


_TENSOR_TYPES = {
  ("torch", "Tensor"): "torch.Tensor",
  ("torch.nn.parameter", "Parameter"): "torch.nn.Parameter",
  ("torch.nn", "Parameter"): "torch.nn.Parameter",
}
_NDARRAY = _Marker("numpy.ndarray")


class _Storage:
  """A storage: its elements' dtype and count, then its bytes (as uint8) once read."""

  def __init__(self, dtype: str, numel: int, key: str):
    self.dtype, self.numel, self.key = dtype, numel, key
    self.order = "<"  # the byte order of its bytes
    self.data: np.ndarray | None = None
    self.root: _Storage | None = None  # a legacy storage view: its root and offset
    self.offset = 0

  @property
  def nbytes(self) -> int:
    return self.numel * _raw_dtype(self.dtype).itemsize


@dataclasses.dataclass(eq=False)
class _Tensor:
  """A tensor to take out of its storage once every storage has been read."""

  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]
  dtype: str  # the storage's, or _rebuild_tensor_v3's
  conj: bool = False
  neg: bool = False


def _raw_dtype(dtype: str, order: str = "<") -> np.dtype:
  raw = np.dtype(_RAW.get(dtype, dtype))
  return raw.newbyteorder(order) if raw.itemsize > 1 else raw


def _int(value, what: str) -> int:
  if type(value) is not int or value < 0:  # bool is not an integer here
    raise _Damaged(f"a tensor's {what} is {_REPR.repr(value)}, not an integer >= 0")
  return value


def _ints(value, what: str) -> tuple[int, ...]:
  if not isinstance(value, tuple | list):
    raise _Damaged(f"a tensor's {what} is {_REPR.repr(value)}, not a tuple of integers")
  return tuple(_int(v, what) for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *rest, dtype=None):
  """torch._utils._rebuild_tensor(_v2): a deferred tensor over one of the file's storages."""
  if not isinstance(storage, _Storage):
    raise _Damaged(f"a tensor over {_REPR.repr(storage)}, not one of the file's storages")
  size, stride = _ints(size, "size"), _ints(stride, "stride")
  if len(size) != len(stride):
    raise _Damaged(f"a tensor of size {size} but stride {stride}")
  tensor = _Tensor(storage, _int(storage_offset, "storage offset"), size, stride,
                   dtype or storage.dtype)
  metadata = rest[2] if len(rest) > 2 else None  # (requires_grad, backward_hooks, metadata)
  if isinstance(metadata, dict):  # the conj and neg bits of a lazily conjugated tensor
    tensor.conj, tensor.neg = bool(metadata.get("conj")), bool(metadata.get("neg"))
  return tensor


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype,
                       *rest):
  """torch._utils._rebuild_tensor_v3: a tensor of the given dtype over untyped bytes."""
  if isinstance(dtype, _PlaceholderType):
    raise _Damaged(f"a tensor of dtype {dtype.name}, which this reader does not know")
  if not isinstance(dtype, _Marker) or dtype.dtype is None or dtype.text.endswith("Storage"):
    raise _Damaged(f"a tensor of dtype {_REPR.repr(dtype)}")
  return _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, hooks, *rest,
                         dtype=dtype.dtype)


def _rebuild_parameter(data, *rest):
  """torch._utils._rebuild_parameter(_with_state): the parameter's tensor."""
  return data


_REBUILDS = (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(context: _Context, func, new_type, args, state):
  """torch._tensor._rebuild_from_type_v2: a plain tensor or Parameter; else a placeholder.

  ``state`` (a tensor's Python attributes) is dropped; another ``new_type`` (a subclass of
  torch.Tensor) is not read as a tensor.
  """
  if func in _REBUILDS and new_type in _TENSOR_MARKERS and isinstance(args, tuple):
    return func(*args)
  return context.placeholder("torch._tensor._rebuild_from_type_v2")(func, new_type, args, state)


class _NumpyDType:
  """``numpy.dtype(name, align, copy)`` as NumPy pickles it, then its state (BUILD)."""

  def __init__(self, name: str):
    self.name, self.order, self.unit = name, "=", ""

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) < 8:
      raise _Damaged(f"a NumPy dtype with the state {_REPR.repr(state)}")
    if state[1] in ("<", ">", "|", "="):
      self.order = state[1]
    if state[2] is not None or state[3] is not None:
      raise _Damaged(f"a structured or sub-array NumPy dtype ({self.name})")
    if self.name[:2] in ("M8", "m8") and len(state) > 8:  # datetimes: (None, (unit, n, ...))
      unit = state[8][1] if isinstance(state[8], tuple) and len(state[8]) == 2 else None
      if not (isinstance(unit, tuple) and len(unit) >= 2 and type(unit[1]) is int):
        raise _Damaged(f"a NumPy {self.name} dtype of unit {_REPR.repr(unit)}")
      text = unit[0].decode("latin1") if isinstance(unit[0], bytes) else str(unit[0])
      self.unit = f"[{unit[1]}{text}]"

  def get(self) -> np.dtype:
    if len(self.name) > 16:
      raise _Damaged(f"a NumPy dtype named {self.name[:20]!r}...")
    try:
      dtype = np.dtype(self.name + self.unit)
    except (TypeError, ValueError) as e:
      raise _Damaged(f"a NumPy dtype named {self.name!r} ({one_line(e)})") from None
    if dtype.fields is not None or dtype.subdtype is not None:
      raise _Damaged(f"a structured or sub-array NumPy dtype ({self.name})")
    return dtype.newbyteorder(self.order) if self.order in "<>" else dtype


def _numpy_dtype(name, align=False, copy=True):
  if not isinstance(name, str):
    raise _Damaged(f"a NumPy dtype named {_REPR.repr(name)}")
  return _NumpyDType(name)


def _as_bytes(data, what: str) -> bytes:
  if isinstance(data, str):  # a Python 2 str, or protocol 2's bytes read back as latin1
    return data.encode("latin1")
  if isinstance(data, bytes | bytearray):
    return bytes(data)
  raise _Damaged(f"{what} from {_REPR.repr(data)}, not bytes")


def _numpy_scalar(dtype, data=None):
  """numpy.core.multiarray.scalar(dtype, bytes): the scalar, from its bytes."""
  if not isinstance(dtype, _NumpyDType):
    raise _Damaged(f"a NumPy scalar of dtype {_REPR.repr(dtype)}")
  dt = dtype.get()
  if dt.hasobject:  # an object scalar's "bytes" is the object, already unpickled
    return data
  raw = _as_bytes(data, "a NumPy scalar")
  if len(raw) != dt.itemsize:
    raise _Damaged(f"a NumPy {dt} scalar of {len(raw)} bytes")
  return np.frombuffer(raw, dtype=dt, count=1)[0]


class _NumpyArray:
  """A NumPy array: ``_reconstruct(ndarray, (0,), b'b')``, then BUILD gives its bytes."""

  def __init__(self):
    self.array: np.ndarray | None = None

  def __setstate__(self, state):
    if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
      raise _Damaged("a NumPy array built twice, or with a state of the wrong form")
    shape, dtype, fortran, raw = state[-4:]
    if not isinstance(dtype, _NumpyDType):
      raise _Damaged(f"a NumPy array of dtype {_REPR.repr(dtype)}")
    self.array = _numpy_array(raw, dtype.get(), _ints(shape, "shape"), "F" if fortran else "C")


def _numpy_array(raw, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
  count = math.prod(shape)
  if dtype.hasobject:  # the elements, already unpickled (so already safe)
    if not isinstance(raw, list) or len(raw) != count:
      raise _Damaged(f"a NumPy object array of shape {shape} from {_REPR.repr(raw)}")
    flat = np.empty(count, dtype=object)
    for i, value in enumerate(raw):
      flat[i] = value
  else:
    raw = _as_bytes(raw, "a NumPy array")
    if len(raw) != count * dtype.itemsize:
      raise _Damaged(f"a NumPy {dtype} array of shape {shape} from {len(raw)} bytes")
    flat = np.frombuffer(raw, dtype=dtype, count=count)
  array = flat.reshape(shape, order=order)
  return np.array(array, dtype=dtype.newbyteorder("="), order="C", copy=True)


def _numpy_reconstruct(subtype, shape=(0,), dtype=b"b"):
  if subtype is not _NDARRAY:
    raise _Damaged(f"numpy _reconstruct of {_REPR.repr(subtype)}, not numpy.ndarray")
  return _NumpyArray()


def _numpy_frombuffer(buffer, dtype, shape, order):
  """numpy.core.numeric._frombuffer (NumPy's pickles of protocol 5)."""
  if not isinstance(dtype, _NumpyDType) or order not in ("C", "F"):
    raise _Damaged(f"a NumPy array of dtype {_REPR.repr(dtype)}, order {_REPR.repr(order)}")
  array = _NumpyArray()
  array.array = _numpy_array(buffer, dtype.get(), _ints(shape, "shape"), order)
  return array


def _dill_create_array(context: _Context, f, args, state, npdict=None):
  """dill._dill._create_array(f, args, state): how ``pickle_module=dill`` pickles arrays.

  Read only when ``f`` is NumPy's ``_reconstruct`` (this module's own) and there is no
  ``npdict`` (a subclass's attributes); anything else is a placeholder.
  """
  if f is _numpy_reconstruct and isinstance(args, tuple) and npdict is None:
    array = f(*args)
    array.__setstate__(state)
    return array
  return context.placeholder("dill._dill._create_array")(f, args, state, npdict)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
  """_codecs.encode(text, 'latin1'): how protocol 2 pickles bytes."""
  if isinstance(obj, str) and encoding in ("latin1", "latin-1"):
    return obj.encode("latin1")
  raise _Damaged(f"_codecs.encode to {_REPR.repr(encoding)} (only latin1 is read)")


def _bytes(data=b"", encoding="latin1", errors="strict"):
  """builtins.bytes / bytearray, from bytes or latin1 text only (never bytes(10**12))."""
  if isinstance(data, str) and encoding not in ("latin1", "latin-1"):
    raise _Damaged(f"bytes of text in {_REPR.repr(encoding)} (only latin1 is read)")
  if isinstance(data, list) and all(type(v) is int for v in data):
    return bytes(data)
  return _as_bytes(data, "bytes")


def _bytearray(*args):
  return bytearray(_bytes(*args))


def _torch_size(sizes=()):
  """torch.Size(sizes): a tuple of integers."""
  if not isinstance(sizes, tuple | list) or not all(type(v) is int for v in sizes):
    raise _Damaged(f"a torch.Size of {_REPR.repr(sizes)}")
  return tuple(sizes)


def _torch_device(kind, index=None):
  """torch.device(type[, index]): its string, "cpu" or "cuda:0"."""
  if not isinstance(kind, str) or not (index is None or type(index) is int):
    raise _Damaged(f"a torch.device of {_REPR.repr((kind, index))}")
  return kind if index is None else f"{kind}:{index}"


_NUMPY_CORE = ("numpy.core", "numpy._core")
_ALLOWED: dict[tuple[str, str], Any] = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("builtins", "complex"): complex,
  ("builtins", "slice"): slice,
  ("builtins", "bytes"): _bytes,
  ("builtins", "bytearray"): _bytearray,
  ("_codecs", "encode"): _codecs_encode,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("torch", "Size"): _torch_size,
  ("torch", "device"): _torch_device,
  ("numpy", "dtype"): _numpy_dtype,
  ("numpy", "ndarray"): _NDARRAY,  # a marker for _reconstruct: never called
}
for _core in _NUMPY_CORE:
  _ALLOWED[(f"{_core}.multiarray", "scalar")] = _numpy_scalar
  _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _numpy_reconstruct
  _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numpy_frombuffer
_MARKERS = {key: _Marker(text) for key, text in _TENSOR_TYPES.items()}
_TENSOR_MARKERS = set(_MARKERS.values())  # the new_type of a plain tensor or a Parameter
for _name, _dtype in _STORAGES.items():
  for _module in _STORAGE_MODULES:
    _MARKERS[(_module, _name)] = _Marker(f"torch.{_name}", _dtype)
for _name, _dtype in _TORCH_DTYPES.items():
  _MARKERS[("torch", _name)] = _Marker(f"torch.{_name}", _dtype)


# --- the unpickler ----------------------------------------------------------------------


class _Context:
  """What one :func:`read` gathers: the placeholders made, the storages seen."""

  def __init__(self):
    self.placeholders: dict[str, type] = {}
    self.storages: dict[str, _Storage] = {}

  def placeholder(self, name: str) -> type:
    if name not in self.placeholders:
      self.placeholders[name] = _PlaceholderType(
        "Placeholder", (Placeholder,), {"name": name, "__module__": __name__}
      )
    return self.placeholders[name]


class _Unpickler(pickle.Unpickler):
  """The allow-list unpickler; ``persistent(pid)`` answers PyTorch's storage references."""

  def __init__(self, file, context: _Context, persistent):
    super().__init__(file, encoding="latin1")
    self._context, self._persistent = context, persistent

  def find_class(self, module: str, name: str):
    # The C unpickler resolves every global through this method, whichever opcode names
    # it: GLOBAL, STACK_GLOBAL, INST, and the EXT1/2/4 codes of copyreg's extension
    # registry (the class given to OBJ, NEWOBJ or REDUCE was one of these first). The one
    # exception, checked with CPython 3.11 to 3.13: an EXT code already in copyreg's
    # _extension_cache is pushed from the cache without find_class, so _check_pickle
    # refuses EXT opcodes before any unpickling (torch.save never writes them).
    # Nothing is imported here: the allow-list maps to this module's own objects.
    module, name = _python3_name(module, name)
    if module == "torch.tensor":  # torch < 1.8's name of torch._tensor
      module = "torch._tensor"
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if (module, name) in _MARKERS:
      return _MARKERS[(module, name)]
    if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
      return functools.partial(_rebuild_from_type_v2, self._context)
    if (module, name) == ("dill._dill", "_create_array"):
      return functools.partial(_dill_create_array, self._context)
    return self._context.placeholder(f"{module}.{name}")

  def persistent_load(self, pid):
    return self._persistent(pid)


def _python3_name(module: str, name: str) -> tuple[str, str]:
  """Python 2's names (``__builtin__.set``, which protocol 2 still writes) as Python 3's."""
  if (module, name) in _compat_pickle.NAME_MAPPING:
    return _compat_pickle.NAME_MAPPING[(module, name)]
  return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _check_pickle(f: io.BytesIO) -> int:
  """Scans the pickle at ``f``'s position without running it; returns where it ends.

  Raises _Truncated if it stops before its STOP, _Damaged for an opcode that is not
  pickle's or an EXT opcode (see find_class), ValueError for other damage.
  """
  start = f.tell()
  try:
    for opcode, _, _ in pickletools.genops(f):
      if opcode.name in ("EXT1", "EXT2", "EXT4"):
        raise _Damaged(f"a copyreg extension code ({opcode.name}), which torch.save never "
                       "writes and which could bypass the allow-list")
  except ValueError as e:
    text = str(e)
    if any(w in text for w in ("exhausted", "not enough data", "remain", "no newline")):
      raise _Truncated("a pickle ends before its STOP") from None
    if "unknown" in text and "opcode" in text:
      raise _Damaged(f"not a pickle here ({one_line(e)})") from None
    raise
  end = f.tell()
  f.seek(start)
  return end


def _unpickle(f: io.BytesIO, context: _Context, persistent) -> Any:
  end = _check_pickle(f)
  obj = _Unpickler(f, context, persistent).load()
  f.seek(end)
  return obj


def _storage_type(value) -> str:
  if isinstance(value, _Marker) and value.dtype is not None and value.text.endswith("Storage"):
    return value.dtype
  if isinstance(value, _PlaceholderType):
    raise _Damaged(f"the storage type {value.name}, which this reader does not know (only "
                   f"{', '.join(sorted(_STORAGES))})")
  raise _Damaged(f"a storage of type {_REPR.repr(value)}")


def _storage_id(pid, length: int) -> tuple[str, str, int]:
  """(dtype, key, numel) of a persistent id ``('storage', type, key, location, numel, ...)``."""
  if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
    fmt = "legacy" if length == 6 else "zip"
    raise _Damaged(f"the persistent id {_REPR.repr(pid)}, not a storage reference of torch's "
                   f"{fmt} format")
  dtype = _storage_type(pid[1])
  key, location, numel = pid[2], pid[3], pid[4]
  if not isinstance(key, str) or not isinstance(location, str | bytes):
    raise _Damaged(f"the persistent id {_REPR.repr(pid)} (its key and location are not text)")
  if type(numel) is not int or numel < 0:
    raise _Damaged(f"a storage of {_REPR.repr(numel)} elements")
  return dtype, key, numel


def _shared_storage(context: _Context, dtype: str, key: str, numel: int) -> _Storage:
  """The storage ``key``, made on its first reference; later ones must agree with it."""
  storage = context.storages.get(key)
  if storage is None:
    storage = context.storages[key] = _Storage(dtype, numel, key)
  elif (storage.dtype, storage.numel) != (dtype, numel):
    raise _Damaged(f"storage {key} referenced as {storage.numel} {storage.dtype} and as "
                   f"{numel} {dtype} elements")
  return storage


# --- the two formats --------------------------------------------------------------------


def _read_zip(f, context: _Context) -> Any:
  try:
    archive = zipfile.ZipFile(f)
  except zipfile.BadZipFile:
    raise _Truncated("a zip archive without its central directory, which is at its end") from None
  with archive:
    names = archive.namelist()
    if not names:
      raise _NotACheckpoint("an empty zip archive")
    found = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    first = names[0].split("/")[0] + "/data.pkl"
    if first in found:  # as torch does: the directory of the archive's first record
      found = [first]
    if len(found) != 1:
      if all(n.endswith(".npy") for n in names):
        raise _NotACheckpoint("a zip archive of .npy files (NumPy's .npz)")
      how_many = "several" if found else "no"
      raise _NotACheckpoint(f"a zip archive with {how_many} <name>/data.pkl (torch.save "
                            "writes one)")
    prefix = found[0][: -len("data.pkl")]
    order = "<"
    if prefix + "byteorder" in names:
      text = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
      if text not in ("little", "big"):
        raise _Damaged(f"the byte order {text!r} (not little or big)")
      order = "<" if text == "little" else ">"

    def load(pid):
      storage = _shared_storage(context, *_storage_id(pid, 5))
      if storage.data is None:
        member = f"{prefix}data/{storage.key}"
        try:
          info = archive.getinfo(member)
        except KeyError:
          raise _Truncated(f"its storage {storage.key} ({member}) is missing") from None
        raw = _member(archive, info, storage.nbytes, f"storage {storage.key}")
        storage.data, storage.order = np.frombuffer(raw, dtype=np.uint8), order
      return storage

    info = archive.getinfo(found[0])
    return _unpickle(io.BytesIO(_member(archive, info, info.file_size, "data.pkl")), context,
                     load)


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, want: int, what: str) -> bytes:
  """The first ``want`` bytes of an archive's member (torch.save stores them uncompressed)."""
  if info.file_size < want:
    raise _Truncated(f"its {what} has {info.file_size} of its {want} bytes")
  if info.compress_type != zipfile.ZIP_STORED and want > 1024 * info.compress_size + 4096:
    raise _Damaged(f"its {what} would inflate {info.compress_size} bytes to {want} (torch.save "
                   "does not compress)")
  with archive.open(info) as member:
    raw = member.read(want)
  if len(raw) < want:
    raise _Truncated(f"its {what} has {len(raw)} of its {want} bytes")
  return raw


def _no_storage(pid):
  raise _Damaged(f"the persistent id {_REPR.repr(pid)} outside the checkpoint's main pickle")


def _read_legacy(data: bytes, context: _Context) -> Any:
  f = io.BytesIO(data)
  try:
    magic = _unpickle(f, context, _no_storage)
  except Exception as e:  # noqa: BLE001 (whatever fails here, it is not a checkpoint)
    if _MAGIC_PICKLE.startswith(data[: len(_MAGIC_PICKLE)]):
      raise _Truncated("it ends inside torch's magic number") from None
    raise _NotACheckpoint(_what_it_seems(data, e)) from None
  if type(magic) is not int or magic != MAGIC_NUMBER:
    raise _NotACheckpoint(f"a plain pickle of {_describe(magic)} (no torch.save magic number)")
  protocol = _unpickle(f, context, _no_storage)
  if protocol != PROTOCOL_VERSION:
    raise _Damaged(f"the protocol version {_REPR.repr(protocol)} after torch's magic number "
                   f"(torch.save writes {PROTOCOL_VERSION})")
  _unpickle(f, context, _no_storage)  # sys_info: little_endian and type sizes, unused
  views: dict[str, _Storage] = {}  # the storage views of PyTorch < 1.0's files, by key

  def load(pid):
    if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
      # ("module", class, source file, source): a whole nn.Module saved, its class's code
      # beside it for torch to compare. The class is what find_class gave (a placeholder).
      if not isinstance(pid[1], _PlaceholderType):
        raise _Damaged(f"a module reference to {_REPR.repr(pid[1])}")
      return pid[1]
    dtype, key, numel = _storage_id(pid, 6)
    view = pid[5]
    if view is None:
      return _shared_storage(context, dtype, key, numel)
    if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
      raise _Damaged(f"the storage view {_REPR.repr(view)}, not (key, offset, size)")
    root = _shared_storage(context, dtype, key, numel)
    view_key, offset, size = view[0], _int(view[1], "view offset"), _int(view[2], "view size")
    storage = views.get(view_key)
    if storage is None:
      storage = views[view_key] = _Storage(dtype, size, view_key)
      storage.root, storage.offset = root, offset
    elif (storage.root, storage.offset, storage.numel) != (root, offset, size):
      raise _Damaged(f"the storage view {view_key} referenced as two different views")
    return storage

  obj = _unpickle(f, context, load)
  keys = _unpickle(f, context, _no_storage)
  if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
    raise _Damaged(f"the storage keys {_REPR.repr(keys)}, not a list of strings")
  position = f.tell()
  for key in keys:
    storage = context.storages.get(key)
    if storage is None:
      raise _Damaged(f"the storage key {key!r}, which no tensor references")
    if storage.data is not None:
      raise _Damaged(f"storage {key} stored twice")
    if len(data) < position + 8:
      raise _Truncated(f"its storage {key} is missing")
    (count,) = struct.unpack_from("<q", data, position)
    if count != storage.numel:
      raise _Damaged(f"storage {key} has {count} elements, its tensors say {storage.numel}")
    want = storage.nbytes
    if len(data) < position + 8 + want:
      raise _Truncated(f"its storage {key} has {len(data) - position - 8} of its {want} bytes")
    storage.data = np.frombuffer(data, dtype=np.uint8, count=want, offset=position + 8)
    position += 8 + want
  for storage in context.storages.values():
    if storage.data is None:
      raise _Damaged(f"storage {storage.key} is referenced but not stored")
  for view in views.values():
    item = _raw_dtype(view.dtype).itemsize
    start, stop = view.offset * item, (view.offset + view.numel) * item
    if stop > view.root.data.size:
      raise _Damaged(f"the storage view {view.key} ({view.numel} elements from {view.offset}) "
                     f"reaches past storage {view.root.key} ({view.root.numel} elements)")
    view.data = view.root.data[start:stop]
  return obj


# --- what the file is, when it is not a checkpoint ------------------------------------


def _describe(value) -> str:
  if isinstance(value, Placeholder):
    return f"an object of class {value.name}"
  if isinstance(value, _PlaceholderType):
    return f"the global {value.name}"
  name = type(value).__name__
  return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _sniff(head: bytes) -> str | None:
  """What a file that starts with ``head`` seems to be, when its signature says."""
  if not head:
    return "empty"
  if head.startswith(b"\x93NUMPY"):
    return "a NumPy .npy file"
  if head.startswith(b"\x89HDF\r\n\x1a\n"):
    return "an HDF5 file (Keras or h5py)"
  if head.startswith(b"\x1f\x8b"):
    return "gzip-compressed data (decompress it first)"
  if head.startswith((b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")):
    return "compressed data (bzip2, xz or zstd: decompress it first)"
  if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27:
    return "a safetensors file"
  return None


def _what_it_seems(data: bytes, error: Exception) -> str:
  head = data[:512]
  try:
    text = head.decode("utf-8")
  except UnicodeDecodeError as e:
    text = head[: e.start].decode("utf-8") if e.start > len(head) - 4 else None
  if text is not None and all(c.isprintable() or c in "\t\n\r\f" for c in text):
    if "<html" in text[:200].lower() or text.lstrip().lower().startswith("<!doctype html"):
      return "an HTML page (a failed download?)"
    start = " ".join(text.split())[:40]
    return f"a text file (it starts with {start!r})"
  if isinstance(error, _Truncated):
    return "not a pickle, or a pickle cut short"
  return f"binary data that is not a pickle (it starts with {head[:8].hex(' ')})"


def _tar_members(f) -> list[str] | None:
  f.seek(0)
  try:
    with tarfile.open(fileobj=f, mode="r:") as tar:  # listing only: nothing is extracted
      return tar.getnames()[:100]
  except (tarfile.TarError, OSError, EOFError):
    return None
  finally:
    f.seek(0)


# --- tensors out of their storages ------------------------------------------------------


class _Materializer:
  """Replaces the deferred tensors, storages, NumPy values and markers in a result."""

  def __init__(self, context: _Context):
    storage_bytes = sum(s.nbytes for s in context.storages.values())
    self.budget = 4 * storage_bytes + _OVERLAP_BYTES
    self.memo: dict[int, tuple[Any, Any]] = {}

  def __call__(self, obj):
    if type(obj) in (str, int, float, bool, bytes, type(None)):
      return obj
    key = id(obj)
    if key in self.memo:
      return self.memo[key][1]
    if isinstance(obj, dict):
      self.memo[key] = (obj, obj)
      items = list(obj.items())
      obj.clear()
      for k, v in items:
        k = self(k)
        try:
          obj[k] = self(v)
        except TypeError:
          raise _Damaged(f"a dict key {_REPR.repr(k)} that is not hashable") from None
      return obj
    if isinstance(obj, list):
      self.memo[key] = (obj, obj)
      obj[:] = [self(v) for v in obj]
      return obj
    if isinstance(obj, Placeholder):
      self.memo[key] = (obj, obj)
      obj.args, obj.kwargs, obj.state = self(obj.args), self(obj.kwargs), self(obj.state)
      obj.items, obj.entries, obj.callee = self(obj.items), self(obj.entries), self(obj.callee)
      return obj
    if isinstance(obj, tuple):
      self.memo[key] = (obj, obj)  # a cycle back to this tuple meets the tuple itself
      out = tuple(self(v) for v in obj)
    elif isinstance(obj, set | frozenset):
      try:
        out = type(obj)(self(v) for v in obj)
      except TypeError:
        raise _Damaged("a set of tensors or arrays (they are not hashable)") from None
    elif isinstance(obj, _Tensor):
      out = self.tensor(obj)
    elif isinstance(obj, _Storage):  # a storage saved by itself: its elements
      out = self.tensor(_Tensor(obj, 0, (obj.numel,), (1,), obj.dtype))
    elif isinstance(obj, _NumpyArray):
      if obj.array is None:
        raise _Damaged("a NumPy array without its data")
      out = obj.array
    elif isinstance(obj, _NumpyDType):
      out = obj.get()
    elif isinstance(obj, _Marker):
      out = obj.text
    else:
      return obj
    self.memo[key] = (obj, out)
    return out

  def tensor(self, t: _Tensor) -> np.ndarray:
    storage = t.storage
    if storage.data is None:
      raise _Damaged(f"storage {storage.key} was never read")
    raw = _raw_dtype(t.dtype, storage.order)
    count = storage.data.size // raw.itemsize  # elements of this dtype in the storage
    elements = storage.data[: count * raw.itemsize].view(raw)
    numel = math.prod(t.size)
    if numel:
      last = t.offset + sum((d - 1) * s for d, s in zip(t.size, t.stride, strict=True))
      if last >= count:
        raise _Damaged(
          f"a tensor (offset {t.offset}, size {t.size}, stride {t.stride}) reaching past its "
          f"storage {storage.key} of {count} {t.dtype} elements"
        )
    self.budget -= numel * raw.itemsize
    if self.budget < 0:
      raise _Damaged("tensors far larger than their storages (overlapping views)")
    native = raw.newbyteorder("=")
    out = np.empty(t.size, dtype=native)
    if numel:
      view = np.lib.stride_tricks.as_strided(
        elements[t.offset :], shape=t.size, strides=tuple(s * raw.itemsize for s in t.stride),
        writeable=False,
      )
      out[...] = view
    if t.dtype == "bfloat16":  # the upper half of a float32: exact
      out = (out.astype(np.uint32) << 16).view(np.float32)
    elif t.dtype == "bool":
      out = out != 0
    if t.conj:
      out = np.conj(out)
    if t.neg:
      out = np.negative(out)
    return out


# --- the entry point ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TorchFile:
  """A ``torch.save`` file as read: the object, the format, what was neutralised.

  Attributes:
    obj: the unpickled object. Tensors, Parameters and storages are NumPy arrays
      (C-contiguous, of their dtype and shape; bfloat16 as float32), ``torch.Size`` a
      tuple, ``torch.device`` and torch dtypes strings (``"cuda:0"``, ``"torch.float32"``),
      and every global outside the allow-list a :class:`Placeholder`.
    format: ``"zip"`` (PyTorch >= 1.6) or ``"legacy"`` (the older stream of pickles).
    placeholders: ``"module.qualname"`` of every global made a placeholder, sorted.
  """

  obj: Any
  format: str
  placeholders: tuple[str, ...]


def read(path: str) -> TorchFile:
  """Reads the ``torch.save`` file at ``path``: no torch, none of the file's code run.

  Args:
    path: the checkpoint (``.pth``, ``.pth.tar``, ``.pt``), in either format.

  Returns:
    The :class:`TorchFile`.

  Raises:
    InputError: ``path`` is not a readable file, is not a PyTorch checkpoint, is truncated,
      or holds something this reader refuses (an unknown storage type, a view past its
      storage, a persistent id that is not a storage's); one line that names the file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    if not os.path.exists(path):
      what = "does not exist"
    else:
      what = "is a directory" if os.path.isdir(path) else "is not a regular file"
    raise _error(f"{path} {what}; pass the path of a PyTorch checkpoint file "
                 "(.pth, .pth.tar, .pt)")
  context = _Context()
  fmt = "?"
  try:
    with open(path, "rb") as f:
      head = f.read(512)
      if len(head) < 4 and b"PK\x03\x04".startswith(head) and head:
        raise _Truncated("it ends inside a zip archive's first header")
      if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        fmt = "zip"
        obj = _read_zip(f, context)
      else:
        seems = _sniff(head)
        if seems is not None:
          raise _NotACheckpoint(seems)
        if len(head) == 512 and head[257:262] == b"ustar":
          members = _tar_members(f) or []
          if {"pickle", "storages", "tensors"} <= set(members):
            raise _error(f"{path} is in the tar format of PyTorch < 0.4, which this reader "
                         "does not read; load it with PyTorch and save it again with torch.save")
          raise _NotACheckpoint("a tar archive (extract the checkpoint from it)")
        fmt = "legacy"
        f.seek(0)
        obj = _read_legacy(f.read(), context)
    obj = _Materializer(context)(obj)
  except InputError:
    raise
  except OSError as e:
    raise _error(f"{path} cannot be read ({one_line(e)}); check that it is a readable "
                 "file") from None
  except _NotACheckpoint as e:
    seems = str(e)
    if seems == "empty":
      raise _error(f"{path} is empty, not a PyTorch checkpoint; download it again") from None
    raise _error(f"{path} is {seems}, not a PyTorch checkpoint; pass a file written by "
                 "torch.save") from None
  except RecursionError:
    raise _error(f"{path} is nested too deeply to read ({fmt} format); pass a checkpoint "
                 "of tensors and plain containers") from None
  except Exception as e:  # noqa: BLE001 (a hostile pickle can raise anything: each is one line)
    if isinstance(e, _Damaged):
      detail = str(e)
    elif isinstance(e, _Truncated | EOFError) or "truncated" in str(e):
      detail = str(e) if isinstance(e, _Truncated) else f"it ends early: {one_line(e, 100)}"
      raise _error(f"{path} is truncated ({detail}); download it again") from None
    else:
      detail = one_line(e, 160)
    raise _error(f"{path} cannot be read as a PyTorch checkpoint ({fmt} format): {detail}; "
                 "download it again, or load it with torch and save its state_dict") from None
  names = tuple(sorted(context.placeholders))
  return TorchFile(obj=obj, format=fmt, placeholders=names)


def _error(message: str) -> InputError:
  return InputError(" ".join(message.split("\n")).replace("\r", " "))
