"""The house is layered, and its folders are the layers.

Each first-level package or module of ``smoothjax`` has a rank; a module may import
only modules of its own package or of a lower rank. ``docs/design.md`` shows the same
table. The pure core (``noise``, ``devices``, ``smoothing``, ``objectives``) imports no
training, checkpointing or input-pipeline library, and no module imports in a circle.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import sys
import warnings

import pytest

from smoothjax import _moved

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "smoothjax"

RANKS = {
  "errors": 0,  # InputError and one_line: the standard library only
  # leaves: the standard library, numpy and errors
  "hashing": 1,
  "locks": 1,
  "stopping": 1,
  "_moved": 1,
  "configs": 1,  # the shipped training configs: ml_collections and each other only
  # the noise families, devices and processes, models, datasets
  "noise": 2,
  "devices": 2,
  "models": 2,
  "data": 2,
  # smoothing proper (CERTIFY, PREDICT); a workdir's run files and checkpoints; the field's
  # published PyTorch checkpoints read without torch and mapped onto the models
  "smoothing": 3,
  "workdir": 3,
  "published": 3,
  # result files (their ABSTAIN is smoothing's); differentiable objectives of a logits_fn
  "results": 4,
  "objectives": 4,
  # tables, plots and pictures of results; the training loop, modes and optimisers
  "analysis": 5,
  "training": 5,
  "jobs": 6,
  "cli": 7,
}
CORE = ("noise", "devices", "smoothing", "objectives")
NOT_IN_CORE = (
  "flax", "optax", "orbax", "grain", "ml_collections", "tensorflow", "tensorflow_datasets"
)


def _package(path: pathlib.Path) -> str:
  return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(("smoothjax", *parts))


def _imports(path: pathlib.Path) -> set[str]:
  """Absolute names of the modules (or names) that ``path`` imports."""
  found = set()
  package = _module_name(path) if path.is_relative_to(PACKAGE) else ""
  if package and path.name != "__init__.py":
    package = package.rsplit(".", 1)[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        module = f"{base}.{node.module}" if node.module else base
      else:
        module = node.module
      found.add(module)
      found.update(f"{module}.{alias.name}" for alias in node.names)
    elif isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
  return found


def _first_level(name: str) -> str | None:
  parts = name.split(".")
  return parts[1] if parts[0] == "smoothjax" and len(parts) > 1 else None


def _files():
  return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_package_has_a_rank():
  assert {_package(p) for p in _files()} == set(RANKS)


def test_each_package_imports_only_lower_ranks():
  wrong = []
  for path in _files():
    package = _package(path)
    for name in _imports(path):
      other = _first_level(name)
      if other is None or other == package or other not in RANKS:
        continue
      if RANKS[other] >= RANKS[package]:
        rank = f"rank {RANKS[other]} >= {RANKS[package]}"
        wrong.append(f"{path.relative_to(PACKAGE)} imports {name} ({rank})")
  assert not wrong, "\n".join(wrong)


def test_the_pure_core_imports_no_training_libraries():
  wrong = []
  for path in _files():
    if _package(path) in CORE:
      for name in _imports(path):
        if name.split(".")[0] in NOT_IN_CORE:
          wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
  assert not wrong, "\n".join(wrong)


def test_the_repository_uses_only_the_new_paths():
  """No import of an old path, in code or in the code strings the tests run as programs."""
  moved = "|".join(sorted(_moved.MOVED, key=len, reverse=True))
  dotted = re.compile(rf"\bsmoothjax\.({moved})\b")
  imported = re.compile(r"from smoothjax import \(?([\w ,\n]+)\)?")
  root = PACKAGE.parent
  wrong = []
  for path in [*PACKAGE.rglob("*.py"), *root.glob("*.py"), *root.glob("tests/*.py"),
               *root.glob("benchmarks/*.py"), *root.glob("*.md"), *root.glob("docs/*.md")]:
    if path.name in ("test_layers.py", "_moved.py"):
      continue
    text = path.read_text()
    if path.suffix == ".md":  # the code blocks only: the prose may name an old path
      text = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S))
    for match in dotted.finditer(text):
      wrong.append(f"{path.relative_to(root)}: {match.group(0)}")
    for match in imported.finditer(text):
      names = {n.strip().split(" as ")[0] for n in match.group(1).replace("\n", ",").split(",")}
      for name in sorted(names & set(_moved.MOVED)):
        wrong.append(f"{path.relative_to(root)}: from smoothjax import {name}")
  assert not wrong, "\n".join(wrong)


def _graph() -> dict[str, set[str]]:
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for imported in _imports(path):
      while imported and imported not in modules:
        imported = imported.rpartition(".")[0]
      if imported and imported != name and imported != "smoothjax":
        edges.add(imported)
    graph[name] = edges
  return graph


def test_no_import_circles():
  graph = _graph()
  state: dict[str, int] = {}

  def visit(module, trail):
    if state.get(module) == 1:
      raise AssertionError("import circle: " + " -> ".join([*trail, module]))
    if state.get(module) == 2:
      return
    state[module] = 1
    for other in sorted(graph.get(module, ())):
      # a package's __init__ importing its own submodules is not a circle
      if not other.startswith(module + "."):
        visit(other, [*trail, module])
    state[module] = 2

  for module in sorted(graph):
    visit(module, [])


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_every_old_path_still_works_with_a_warning(old):
  new = importlib.import_module(_moved.MOVED[old])
  for name in [f"smoothjax.{old}"]:
    sys.modules.pop(name, None)
  import smoothjax

  smoothjax.__dict__.pop(old, None)
  with pytest.warns(DeprecationWarning, match=f"smoothjax.{old} moved to {_moved.MOVED[old]}"):
    assert importlib.import_module(f"smoothjax.{old}") is new
  assert new.__spec__.name == _moved.MOVED[old]  # the module keeps its own spec
  smoothjax.__dict__.pop(old, None)
  with pytest.warns(DeprecationWarning, match=f"smoothjax.{old} moved"):
    assert getattr(smoothjax, old) is new
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    sys.modules.pop(f"smoothjax.{old}", None)
    smoothjax.__dict__.pop(old, None)
    exec(f"from smoothjax.{old} import __name__ as imported", namespace := {})
  assert namespace["imported"] == _moved.MOVED[old]
  sys.modules.pop(f"smoothjax.{old}", None)
  smoothjax.__dict__.pop(old, None)


def test_same_name_packages_offer_the_old_modules_names():
  """``smoothjax.data``, ``.training``, ... were modules: their folders offer the same names."""
  from smoothjax import analysis, data, results, smoothing, training, workdir

  for package, names in {
    data: ("load", "DatasetInfo", "batches", "read_idx", "permutation"),
    training: ("train_and_evaluate", "validate_config", "make_optimizer", "MODES"),
    workdir: ("load_config", "load_info", "save_run_files", "restore_model"),
    results: ("ResultWriter", "read_results", "merge_parts", "Results", "ABSTAIN"),
    analysis: ("certified_accuracy", "acr", "table", "plot_certified_accuracy"),
    smoothing: ("certify", "certify_batch", "predict", "certify_adaptive", "Certificate"),
  }.items():
    for name in names:
      assert hasattr(package, name), f"{package.__name__}.{name}"


def test_the_package_exports_a_curated_set():
  import smoothjax

  for name in ("certify", "certify_batch", "predict", "certify_adaptive", "certify_adaptive_batch",
               "Certificate", "Gaussian", "Laplace", "Uniform", "ExpInf", "InputError", "jobs"):
    assert name in smoothjax.__all__, name
  assert not set(smoothjax.__all__) & set(_moved.MOVED)
