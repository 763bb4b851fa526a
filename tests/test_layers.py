"""The house is layered: the pure core imports only the core, and no module imports in a circle."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "smoothjax"
CORE = {
  "errors",
  "noise",
  "stats",
  "votes",
  "parallel",  # meshes, shardings and multi-process start: jax and leaf modules only
  "processes",  # the processes of a job meeting, agreeing and stopping: jax and leaves only
  "stopping",  # SIGTERM at safe points: the standard library only
  "locks",  # lock files: errors only
  "certificates",
  "sequential",
  "smoothing",
  "losses",
  "attacks",
  "generation",
  "hashing",
  "numerics",  # matmul precision and the deterministic-operations flag: jax and errors only
  "sizing",  # step sizes from device memory: jax and errors only
}


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  return parts[0] if parts[-1] != "__init__" or len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path) -> set[str]:
  """First-level smoothjax modules that ``path`` imports (``noise/`` counts as noise)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      parts = node.module.split(".")
      if parts[0] == "smoothjax":
        if len(parts) > 1:
          found.add(parts[1])
        else:
          found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level > 0:
      found.add("noise")  # relative imports live inside the noise/ and models/ packages
    elif isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        if parts[0] == "smoothjax" and len(parts) > 1:
          found.add(parts[1])
  return found


def _graph() -> dict[str, set[str]]:
  graph: dict[str, set[str]] = {}
  for path in PACKAGE.rglob("*.py"):
    module = _module(path)
    if module == "__init__":
      continue
    graph.setdefault(module, set()).update(_imports(path) - {module})
  return graph


def test_the_pure_core_imports_only_the_core():
  graph = _graph()
  for module in CORE:
    assert module in graph, module
    outside = graph[module] - CORE
    assert not outside, f"{module} imports {sorted(outside)}"


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
      visit(other, [*trail, module])
    state[module] = 2

  for module in sorted(graph):
    visit(module, [])
