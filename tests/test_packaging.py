"""Packaging: the shipped models install as package data, and setup.cfg lists every package."""

import configparser
import glob
import importlib.resources
import pathlib

from remdm_jax import jobs

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
