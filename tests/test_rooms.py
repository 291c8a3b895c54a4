"""The package's rooms and what each may import, read from the source with `ast`.

The layout: a small shared core of modules directly in `remdm_jax/` and one subpackage per room
(`sampling`, `models`, `weights`, `text`, `data`, `training`, `parallel`, `jobs`, `eval`). The
sampler must stay composable inside other programs, so it imports no jobs, training, data or
weight files; nothing imports the command lines; and heavy optional dependencies are imported
only by the module that uses them (import circles: `tests/test_packaging.py`).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "remdm_jax"
ROOMS = ("sampling", "models", "weights", "text", "data", "training", "parallel", "jobs", "eval",
         "tasks", "images")
HEAVY = {   # top-level package -> the modules allowed to import it at module level
    "tensorflow_datasets": {"remdm_jax.data.datasets"},
    "orbax": {"remdm_jax.weights.checkpoint"},
    "tokenizers": set(),
    "rdkit": set(),
    "jinja2": set(),
}
FORBIDDEN = {   # room -> rooms (or modules) it must never import, at any depth of its code
    "remdm_jax.sampling": ("remdm_jax.jobs", "remdm_jax.training", "remdm_jax.data",
                           "remdm_jax.weights", "remdm_jax.cli"),
    "remdm_jax.models": ("remdm_jax.jobs", "remdm_jax.training", "remdm_jax.data",
                         "remdm_jax.weights", "remdm_jax.sampling", "remdm_jax.cli"),
    "remdm_jax.text": ("remdm_jax.jobs", "remdm_jax.training", "remdm_jax.sampling",
                       "remdm_jax.weights", "remdm_jax.cli"),
    "remdm_jax.images": ("remdm_jax.jobs", "remdm_jax.training", "remdm_jax.sampling",
                         "remdm_jax.cli"),
    "remdm_jax.tasks": ("remdm_jax.jobs", "remdm_jax.training", "remdm_jax.sampling",
                        "remdm_jax.weights", "remdm_jax.models", "remdm_jax.data",
                        "remdm_jax.cli"),
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, module: str, top_level_only: bool) -> set[str]:
  """Names of the modules `module` imports (`from pkg import sub` counts as `pkg.sub` when
  `sub` is a module of the package); module-level statements only, or every one."""
  nodes = tree.body if top_level_only else ast.walk(tree)
  names = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      if node.level:   # relative import
        base = ".".join(module.split(".")[:-node.level] + [node.module])
      for alias in node.names:
        names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
  return names


def _graph(top_level_only: bool) -> dict[str, set[str]]:
  return {name: _imports(ast.parse(path.read_text()), name, top_level_only)
          for name, path in MODULES.items()}


def test_layout():
  """At most 12 modules directly in the package, at least 6 rooms, each a package."""
  flat = [p.name for p in PACKAGE.glob("*.py")]
  assert len(flat) <= 12, sorted(flat)
  for room in ROOMS:
    assert (PACKAGE / room / "__init__.py").is_file(), room


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_keep_their_contracts(room):
  """No module of the room imports a forbidden room, even inside a function."""
  found = [f"{name} imports {dep}" for name, deps in _graph(False).items()
           if name == room or name.startswith(room + ".")
           for dep in deps for banned in FORBIDDEN[room]
           if dep == banned or dep.startswith(banned + ".")]
  assert not found, found


def test_nothing_imports_the_command_lines():
  found = [name for name, deps in _graph(False).items()
           if name != "remdm_jax.cli" and "remdm_jax.cli" in deps]
  assert not found, found


@pytest.mark.parametrize("heavy", sorted(HEAVY))
def test_heavy_dependencies_are_imported_where_used(heavy):
  """A heavy optional dependency is imported at module level only by the modules listed."""
  found = {name for name, deps in _graph(True).items()
           if any(d == heavy or d.startswith(heavy + ".") for d in deps)}
  assert found <= HEAVY[heavy], sorted(found - HEAVY[heavy])


def test_import_loads_no_heavy_dependency():
  """`import remdm_jax` and the sampler, models, tokenizers and metrics import none of
  tensorflow-datasets, `tokenizers`, RDKit or orbax (a fresh interpreter)."""
  code = ("import sys, remdm_jax, remdm_jax.models, remdm_jax.text.tokenizers, remdm_jax.eval; "
          "from remdm_jax.sampling import make_sampler; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow_datasets', 'tokenizers', 'rdkit', 'orbax'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, timeout=300)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_load_model_is_imported_on_first_use():
  import remdm_jax
  from remdm_jax.weights import checkpoint
  assert remdm_jax.load_model is checkpoint.load_model
  with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
    remdm_jax.not_a_name  # noqa: B018


TESTS = pathlib.Path(__file__).resolve().parent


def _imports_of_test_modules(source: str) -> list[str]:
  """The names in `source` that import a test module (`test_*`) or `conftest`, at any depth."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module]
    else:
      continue
    found += [n for n in names
              if n.split(".")[0].startswith("test_") or n.split(".")[0] == "conftest"]
  return found


def test_no_test_module_imports_another():
  """Shared reference code lives in `tests/references/`: no file of `tests/` imports a test
  module or `conftest` (pytest loads those itself; importing one runs its module code twice
  under another name and couples two test files)."""
  found = {str(p.relative_to(TESTS)): names for p in sorted(TESTS.rglob("*.py"))
           if (names := _imports_of_test_modules(p.read_text()))}
  assert not found, found


def test_the_test_module_check_can_fail():
  assert _imports_of_test_modules("from test_llada import np_forward") == ["test_llada"]
  assert _imports_of_test_modules("def f():\n  import test_locks as t\n") == ["test_locks"]
  assert _imports_of_test_modules("from conftest import MASK_ID") == ["conftest"]
  assert _imports_of_test_modules("from references.llada import np_forward\nimport testing") == []
