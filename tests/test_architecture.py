"""The package's floors: no import circle, and no module using another's private names.

Read from the source with ``ast`` (every ``import``, function-level ones
included), so a lazy import cannot hide a circle.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cardiac_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, known: set[str]) -> dict[str, str]:
  """{local alias: imported cardiac_jax module} of every import in the file."""
  out = {}
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("cardiac_jax"):
          out[a.asname or a.name] = a.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        "cardiac_jax"):
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out[a.asname or a.name] = full if full in known else node.module
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  graph = {}
  for name, path in modules.items():
    targets = set(_imports(path, known).values()) & known
    graph[name] = {t for t in targets if t != name and t != "cardiac_jax"}
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_import_graph_has_no_circle():
  graph = _graph()
  assert "cardiac_jax.train" in graph and graph["cardiac_jax.train"], "the graph was not read"
  assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _private_uses(path: pathlib.Path, known: set[str]) -> list[str]:
  aliases = _imports(path, known)
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and aliases[node.value.id] in known
        and node.attr.startswith("_") and not node.attr.startswith("__")):
      found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        "cardiac_jax"):
      found += [f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {a.name}"
                for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
  return found


def test_no_module_uses_another_modules_private_names():
  known = set(_modules())
  files = list(PACKAGE.rglob("*.py")) + list((ROOT / "experiments").glob("*.py"))
  assert [u for f in files for u in _private_uses(f, known)] == []
