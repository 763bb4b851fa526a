"""The field's published architectures, mapped onto smoothjax's models.

A PyTorch ``state_dict`` maps names such as ``layer2.0.conv1.weight`` to arrays; this
module knows, for each architecture its authors name (``cifar_resnet20``,
``cifar_resnet110``, ``resnet50``, ``lenet``), which smoothjax model computes the same
function and where each array goes, with its layout converted:

* convolutions OIHW -> HWIO, linear layers (out, in) -> (in, out); LeNet's first linear
  layer also has its rows permuted from PyTorch's CHW flattening to NHWC's HWC;
* BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` -> ``scale``/``bias``/
  ``mean``/``var`` (epsilon 1e-5 on both sides); ``num_batches_tracked`` is not used;
* the input normalisation: Cohen et al.'s ``NormalizeLayer`` (mean and std), SmoothAdv's
  ``InputCenterLayer`` (mean only), none (the MNIST models of consistency), or the
  buffers of MadryLab's ``InputNormalize`` read from the file, which also clamps to [0, 1].

The keys may sit under the prefixes of their wrappers (``1.`` of Cohen's
``Sequential(normalize, model)``, ``module.`` of ``DataParallel``, ``module.model.`` of
MadryLab's ``AttackerModel``, ...); :func:`convert` finds the prefix, and every key is
accounted for: mapped, a ``num_batches_tracked``, an exact copy of a mapped array (the
``module.attacker.model.`` copy in MadryLab's files), or an error that lists them. A
missing key or a shape that does not fit is an error too: never a partial load.

Sources: ``code/archs/cifar_resnet.py`` and ``code/datasets.py`` of locuslab/smoothing;
``code/datasets.py`` of Hadisalman/smoothing-adversarial; ``code/archs/lenet.py`` of
jh-jeong/smoothing-consistency; ``robustness/cifar_models/resnet.py``,
``robustness/tools/helpers.py`` and ``robustness/attacker.py`` of MadryLab/robustness;
``torchvision/models/resnet.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smoothjax import models
from smoothjax.data import DatasetInfo
from smoothjax.errors import InputError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # Cohen et al. and MadryLab, CIFAR-10
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What converting needs to know of a dataset, without its files."""

  name: str  # smoothjax's (TFDS) name, what config.dataset holds
  num_classes: int
  image_shape: tuple[int, int, int]
  split_sizes: dict
  mean: tuple[float, ...]  # the authors' normalisation constants
  std: tuple[float, ...]


DATASETS = {
  "cifar10": Dataset("cifar10", 10, (32, 32, 3), {"train": 50000, "test": 10000}, CIFAR_MEAN,
                     CIFAR_STD),
  "imagenet": Dataset(
    "imagenet2012", 1000, (224, 224, 3), {"train": 1281167, "test": 50000}, IMAGENET_MEAN,
    IMAGENET_STD,
  ),
  "mnist": Dataset("mnist", 10, (28, 28, 1), {"train": 60000, "test": 10000}, (0.0,), (1.0,)),
}
DATASET_ALIASES = {"imagenet2012": "imagenet", "cifar": "cifar10"}

# How the authors' code normalises: NormalizeLayer, InputCenterLayer, nothing.
NORMALIZATIONS = ("cohen", "center", "none")


@dataclasses.dataclass(frozen=True)
class Architecture:
  """An authors' architecture on a dataset, and the smoothjax models that compute it."""

  name: str
  dataset: str  # a key of DATASETS
  layout: str  # "cifar_resnet" (Cohen), "torchvision", "madry_cifar" or "lenet"
  models: tuple[str, ...]  # the full model first, then narrower ones (test fixtures)
  stage_sizes: tuple[int, ...] = ()
  normalization: str = "cohen"  # the default normalisation

  @property
  def label(self) -> str:
    return f"{self.name} on {self.dataset}"


ARCHITECTURES = (
  Architecture("cifar_resnet20", "cifar10", "cifar_resnet", ("resnet20",), (3, 3, 3)),
  Architecture("cifar_resnet110", "cifar10", "cifar_resnet", ("resnet110",), (18, 18, 18)),
  Architecture(
    "resnet50", "imagenet", "torchvision", ("resnet50", "resnet50_tiny"), (3, 4, 6, 3)
  ),
  Architecture(
    "resnet50", "cifar10", "madry_cifar", ("resnet50_cifar", "resnet50_cifar_tiny"),
    (3, 4, 6, 3),
  ),
  Architecture("lenet", "mnist", "lenet", ("lenet",), normalization="none"),
)
ARCH_NAMES = tuple(dict.fromkeys(a.name for a in ARCHITECTURES))


def dataset(name: str) -> Dataset:
  """The description of the authors' dataset ``name`` (``cifar10``, ``imagenet``, ``mnist``)."""
  key = DATASET_ALIASES.get(name, name)
  if key not in DATASETS:
    raise InputError(
      f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} (the authors' names)"
    )
  return DATASETS[key]


def architecture(name: str, dataset_name: str) -> Architecture:
  """The architecture ``name`` for ``dataset_name``; InputError naming the ones there are."""
  key = DATASET_ALIASES.get(dataset_name, dataset_name)
  dataset(key)
  for arch in ARCHITECTURES:
    if arch.name == name and arch.dataset == key:
      return arch
  if name not in ARCH_NAMES:
    raise InputError(f"unknown architecture {name!r}; choose one of {', '.join(ARCH_NAMES)}")
  have = ", ".join(a.dataset for a in ARCHITECTURES if a.name == name)
  raise InputError(
    f"architecture {name!r} exists for {have}, not {dataset_name!r}; check --dataset"
  )


def info(arch: Architecture, mean, std) -> DatasetInfo:
  """The dataset description a converted model's workdir records."""
  d = DATASETS[arch.dataset]
  return DatasetInfo(
    name=d.name,
    num_classes=d.num_classes,
    image_shape=d.image_shape,
    mean=tuple(float(m) for m in mean),
    std=tuple(float(s) for s in std),
    split_sizes=dict(d.split_sizes),
  )


_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _conv(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w


def _linear(w: np.ndarray) -> np.ndarray:
  return w.T if w.ndim == 2 else w


def _path_name(path) -> str:
  return ".".join(str(p) for p in path)


def torch_names(arch: Architecture, model: nnx.Module) -> dict[tuple, tuple[str, object]]:
  """For each array of ``model``'s state but its normalisation: the torch key and layout.

  Returns:
    ``{path: (torch_key, convert)}`` with ``convert(torch_array) -> smoothjax_array``.
  """
  out = {}
  blocks = [(s, i) for s, size in enumerate(arch.stage_sizes, 1) for i in range(size)]
  shortcut = "shortcut" if arch.layout == "madry_cifar" else "downsample"
  head = {"madry_cifar": "linear", "lenet": "fc2"}.get(arch.layout, "fc")
  for path, _ in nnx.to_flat_state(nnx.state(model)):
    path = tuple(path)
    last = path[-1]
    if path[0] == "normalize":
      continue
    if arch.layout == "lenet":
      layer = "fc2" if path[0] == "head" else path[0]
      kind = "weight" if last == "kernel" else last
      convert = _conv if layer.startswith("conv") else _linear
      if layer == "fc1" and last == "kernel":
        convert = _lenet_fc1(model)
      out[path] = (f"{layer}.{kind}", convert)
      continue
    if path[0] == "head":
      out[path] = (f"{head}.{'weight' if last == 'kernel' else 'bias'}", _linear)
      continue
    if path[0] in ("stem_conv", "stem_bn"):
      prefix = "conv1" if path[0] == "stem_conv" else "bn1"
    elif path[0] == "blocks":
      stage, i = blocks[path[1]]
      if path[2] == "shortcut":  # ("blocks", k, "shortcut", "layers", j, leaf)
        prefix = f"layer{stage}.{i}.{shortcut}.{path[4]}"
      else:
        prefix = f"layer{stage}.{i}.{path[2]}"
    else:
      raise AssertionError(f"unmapped path {_path_name(path)}")
    if last == "kernel":
      out[path] = (f"{prefix}.weight", _conv)
    else:
      out[path] = (f"{prefix}.{_BN[last]}", lambda a: a)
  return out


def _lenet_fc1(model):
  """PyTorch flattens LeNet's features as CHW, smoothjax as HWC: permute fc1's inputs."""
  channels = model.conv2.out_features

  def convert(w: np.ndarray) -> np.ndarray:
    out, features = w.shape
    side = int(round((features // channels) ** 0.5))
    if side * side * channels != features:
      return w.T  # the shape check reports it
    return w.reshape(out, channels, side, side).transpose(2, 3, 1, 0).reshape(features, out)

  return convert


@dataclasses.dataclass(frozen=True)
class Converted:
  """A model converted from a state_dict, and how every key of the file was used."""

  model: nnx.Module
  model_name: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  clip_inputs: bool
  normalization: str  # "cohen", "center", "none" or "file" (MadryLab's buffers)
  prefix: str
  mapped: dict  # torch key -> smoothjax path
  duplicates: dict  # torch key -> the mapped key whose array it repeats
  unused: tuple  # keys not needed (num_batches_tracked)


def find_state_dict(obj) -> tuple[Mapping, str]:
  """The ``state_dict`` inside a checkpoint's object, and where it was found.

  A file holds the state_dict itself (``torch.save(model.state_dict())``) or a dict with
  it under ``state_dict`` (Cohen et al., SmoothAdv, consistency), ``model`` (MadryLab),
  ``model_state_dict`` or ``net``.
  """

  def is_state(d) -> bool:
    return (
      isinstance(d, Mapping)
      and bool(d)
      and all(isinstance(k, str) for k in d)
      and all(isinstance(v, np.ndarray) for v in d.values())
    )

  if is_state(obj):
    return obj, "the file itself"
  if isinstance(obj, Mapping):
    for key in ("state_dict", "model", "model_state_dict", "net"):
      if is_state(obj.get(key)):
        return obj[key], repr(key)
    keys = ", ".join(repr(k) for k in list(obj)[:10])
    raise InputError(
      f"the file holds a dict without a state_dict (its keys: {keys}); save the model's "
      "state_dict() (under 'state_dict' or 'model') and convert that"
    )
  raise InputError(
    f"the file holds a {type(obj).__name__}, not a state_dict; save the model's state_dict() "
    "and convert that"
  )


def _find_prefix(keys, wanted: list[str]) -> str:
  """The prefix under which the most of ``wanted`` are keys (the shortest among ties)."""
  anchor = wanted[0]
  candidates = {k[: -len(anchor)] for k in keys if k == anchor or k.endswith("." + anchor)}
  candidates.add("")
  best = max(candidates, key=lambda p: (sum(p + w in keys for w in wanted), -len(p)))
  return best


def _madry_normalizer(state: Mapping, prefix: str):
  """MadryLab's ``InputNormalize`` buffers beside the model (``module.normalizer.new_*``)."""
  outer = prefix[: -len("model.")] if prefix.endswith("model.") else prefix
  mean_key, std_key = outer + "normalizer.new_mean", outer + "normalizer.new_std"
  if mean_key in state and std_key in state:
    return mean_key, std_key
  return None


def convert(
  arch: Architecture,
  state: Mapping[str, np.ndarray],
  *,
  normalization: str | None = None,
) -> Converted:
  """The smoothjax model of ``arch`` holding the arrays of a PyTorch ``state``.

  Args:
    arch: the architecture (:func:`architecture`).
    state: the state_dict, its tensors as NumPy arrays (:mod:`smoothjax.published.pickles`).
    normalization: ``cohen`` (NormalizeLayer: the dataset's mean and std), ``center``
      (InputCenterLayer: mean only) or ``none``; default the architecture's. MadryLab's
      files carry their normalisation, and then ``normalization`` must be None.

  Returns:
    The :class:`Converted` model, in eval mode.

  Raises:
    InputError: keys missing, unused or of other shapes than the architecture's, or a
      normalisation given for a file that has its own.
  """
  d = DATASETS[arch.dataset]
  if normalization is not None and normalization not in NORMALIZATIONS:
    raise InputError(
      f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}"
    )
  keys = set(state)
  problems = None
  for name in arch.models:
    abstract = nnx.eval_shape(
      lambda name=name: models.create(
        name, num_classes=d.num_classes, mean=d.mean, std=d.std,
        input_shape=d.image_shape, rngs=nnx.Rngs(params=0),
      )
    )
    names = torch_names(arch, abstract)
    wanted = [key for key, _ in names.values()]
    prefix = _find_prefix(keys, wanted)
    found = _fit(names, abstract, state, prefix)
    if isinstance(found, dict):
      return _build(arch, name, abstract, state, prefix, names, found, normalization)
    problems = problems or found  # report against the full-size model
  raise InputError(problems)


def _fit(names, abstract, state, prefix):
  """The converted arrays by path, or a one-line description of why the state does not fit."""
  shapes = {tuple(p): v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(abstract))}
  missing = [prefix + key for key, _ in names.values() if prefix + key not in state]
  if missing:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (
      f"the file lacks {len(missing)} keys of the architecture ({', '.join(missing[:3])}{more}); "
      "it holds another architecture: check --arch"
    )
  arrays = {}
  for path, (key, conv) in names.items():
    array = np.asarray(conv(np.asarray(state[prefix + key])))
    if array.shape != shapes[path]:
      return (
        f"{prefix + key} has shape {tuple(state[prefix + key].shape)}, which does not fit "
        f"{_path_name(path)} {shapes[path]}; the file holds another architecture or number "
        "of classes: check --arch and --dataset"
      )
    arrays[path] = array
  return arrays


def _same(a, b) -> bool:
  return np.shape(a) == np.shape(b) and np.array_equal(a, b)


def _build(arch, model_name, abstract, state, prefix, names, arrays, normalization):
  """The :class:`Converted` model: ``abstract`` (the fitted one) filled with ``arrays``."""
  d = DATASETS[arch.dataset]
  mapped = {prefix + key: _path_name(path) for path, (key, _) in names.items()}
  used = set(mapped)
  madry = _madry_normalizer(state, prefix)
  clip = False
  if madry is not None:
    if normalization is not None:
      raise InputError(
        f"the file holds its own normalisation ({madry[0]}, {madry[1]}); drop --normalization"
      )
    mean = tuple(float(v) for v in np.ravel(state[madry[0]]))
    std = tuple(float(v) for v in np.ravel(state[madry[1]]))
    kind, clip = "file", True
    mapped[madry[0]], mapped[madry[1]] = "normalize.mean", "normalize.std"
    used |= set(madry)
  else:
    kind = normalization or arch.normalization
    channels = d.image_shape[-1]
    mean = d.mean if kind in ("cohen", "center") else (0.0,) * channels
    std = d.std if kind == "cohen" else (1.0,) * channels
  # What a leftover key may repeat: a mapped key under another prefix (MadryLab's
  # module.attacker.model.* copy), or a normaliser buffer (module.attacker.normalize.*).
  suffixes = {key[len(prefix):]: key for key in mapped if key.startswith(prefix)}
  if madry is not None:
    suffixes.update({key.rsplit(".", 1)[-1]: key for key in madry})
  duplicates, unused, left = {}, [], []
  for key in sorted(set(state) - used):
    if key.endswith("num_batches_tracked"):
      unused.append(key)
      continue
    parts = key.split(".")
    tails = (".".join(parts[i:]) for i in range(1, len(parts)))  # the longest first
    twin = next((suffixes[t] for t in tails if t in suffixes), None)
    if twin is None or not _same(state[twin], state[key]):
      left.append(key)
    else:
      duplicates[key] = twin
  if left:
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    raise InputError(
      f"{len(left)} keys of the file are not part of {arch.label} ({', '.join(left[:3])}{more}); "
      "it holds another architecture or more than the model: check --arch"
    )
  # The abstract model (no initialisation computed), filled with the file's arrays and
  # the normalisation found above.
  abstract.normalize.clip = clip
  graphdef, current = nnx.split(abstract)
  constants = {("normalize", "mean"): mean, ("normalize", "std"): std}
  values = []
  for path, variable in nnx.to_flat_state(current):
    path = tuple(path)
    value = constants[path] if path in constants else arrays[path]
    value = jnp.asarray(np.asarray(value, np.float32).reshape(variable.get_value().shape))
    values.append((path, variable.replace(value)))
  model = nnx.merge(graphdef, nnx.from_flat_state(values))
  model.eval()
  jax.block_until_ready(nnx.state(model))
  return Converted(
    model=model, model_name=model_name, mean=mean, std=std, clip_inputs=clip,
    normalization=kind, prefix=prefix, mapped=mapped, duplicates=duplicates,
    unused=tuple(unused),
  )
