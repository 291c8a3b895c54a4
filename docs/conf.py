"""Sphinx configuration of the remdm-jax documentation.

Pages are MyST Markdown; the API reference is generated from the docstrings (autodoc, with
napoleon for their Google style). Build with warnings as errors, so that a renamed or removed
function breaks the build instead of the page:

  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import inspect
import os

from docutils import nodes
from sphinx import addnodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

os.environ.setdefault("JAX_PLATFORMS", "cpu")   # importing the library for autodoc needs no GPU

project = "remdm-jax"
author = "remdm-jax contributors"
copyright = "2026, remdm-jax contributors"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3          # [text](page.md#a-heading) links
default_role = "code"             # docstrings write code in single backticks

autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Every reference to an object of the library must resolve, so a renamed function breaks the
# build; references to other packages (jax.Array, numpy types in signatures) are not checked.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!remdm_jax\b).*")]

html_theme = "alabaster"
html_title = "remdm-jax"

_logger = logging.getLogger(__name__)

def _public_names() -> list[tuple[str, str, str]]:
  """`(name, role, target)` for every name `remdm_jax` exports: its documented home."""
  import remdm_jax
  names = []
  for name in remdm_jax.__all__:
    obj = getattr(remdm_jax, name)
    if inspect.ismodule(obj):
      names.append((name, "mod", obj.__name__))
    elif inspect.isclass(obj) or inspect.isfunction(obj):
      names.append((name, "obj", f"{obj.__module__}.{name}"))
    else:     # data: found by suffix among the documented objects
      names.append((name, "obj", f".{name}"))
  return names


class PublicNames(SphinxDirective):
  """A list of `remdm_jax.__all__`, each name linked to where it is documented."""

  def run(self):
    items = nodes.bullet_list()
    for name, role, target in _public_names():
      ref = addnodes.pending_xref("", refdomain="py", reftype=role,
                                  reftarget=target.lstrip("."), refexplicit=True,
                                  refwarn=True, refspecific=target.startswith("."))
      ref += nodes.literal(text=f"remdm_jax.{name}")
      items += nodes.list_item("", nodes.paragraph("", "", ref))
    return [items]


def _check_public_names(app, env) -> None:
  """Warns (an error under -W) when an exported name is documented nowhere."""
  documented = set(env.get_domain("py").objects)
  for name, _, target in _public_names():
    found = (target in documented if not target.startswith(".")
             else any(key.endswith(target) for key in documented))
    if not found:
      _logger.warning(f"remdm_jax.{name} is exported but not documented in the API reference "
                      f"(expected {target.lstrip('.')})")


def setup(app):
  app.add_directive("remdm-public-names", PublicNames)
  app.connect("env-check-consistency", _check_public_names)
