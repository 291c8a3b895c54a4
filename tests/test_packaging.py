"""Packaging: the shipped models install as package data, and setup.cfg lists every package."""

import configparser
import glob
import importlib.resources
import pathlib

from remdm_jax.jobs import sample_job as jobs

REPO = pathlib.Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  return cfg


def test_shipped_models_are_found_through_importlib_resources():
  folder = importlib.resources.files("remdm_jax.shipped")
  for name in ("shakespeare-mdlm", "shakespeare-ar"):
    assert (folder / name / "config.json").is_file()
    assert (folder / name / "params").is_dir()
  assert jobs.SHIPPED_MODEL == pathlib.Path(folder, "shakespeare-mdlm")


def test_package_data_patterns_cover_every_shipped_file():
  """A file added to checkpoints/ that no pattern matches would be missing after install."""
  root = REPO / "checkpoints"
  patterns = _setup_cfg()["options.package_data"]["remdm_jax.shipped"].split()
  matched = {pathlib.Path(p) for pattern in patterns
             for p in glob.glob(pattern, root_dir=root, recursive=True)
             if (root / p).is_file()}
  shipped = {p.relative_to(root) for p in root.rglob("*")
             if p.is_file() and p.name != "__init__.py" and "__pycache__" not in p.parts}
  assert shipped and matched == shipped


def test_every_package_is_listed():
  listed = set(_setup_cfg()["options"]["packages"].split())
  found = {".".join(p.relative_to(REPO).parent.parts)
           for p in (REPO / "remdm_jax").rglob("__init__.py")}
  assert listed == found | {"remdm_jax.shipped"}


def _imports(path: pathlib.Path, package: str) -> set[str]:
  """The `remdm_jax` modules a source file imports anywhere (module level, functions,
  TYPE_CHECKING blocks), as dotted names."""
  import ast
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found.update(f"{node.module}.{alias.name}" for alias in node.names)
  return {name for name in found if name.startswith(package)}


def test_no_import_circle_among_the_library_modules():
  """Every import between remdm_jax modules points one way (depth-first search for a back
  edge over the import graph of the source files)."""
  root = REPO / "remdm_jax"
  modules = {}
  for path in root.rglob("*.py"):
    parts = path.relative_to(REPO).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules[name] = path
  graph = {name: sorted(m for m in _imports(path, "remdm_jax") if m in modules and m != name
                        and not name.startswith(m + "."))    # a package's own __init__
           for name, path in modules.items()}
  state, stack = {}, []

  def visit(name):
    state[name] = "open"
    stack.append(name)
    for nxt in graph[name]:
      if state.get(nxt) == "open":
        raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[name] = "done"

  for name in sorted(graph):
    if name not in state:
      visit(name)
