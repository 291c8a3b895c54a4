"""The pinned reference code of the LLaDA and MaskGIT benchmarks, and the one folder that holds
it.

`benchmarks/prepare_references.sh DIR` clones each repository below at its commit into
`DIR/<folder>` and creates `DIR/venv`, a Python with torch and transformers. The benchmarks
take DIR from `--references` or the environment variable `REMDM_REFERENCES`; their other
reference flags default to paths under it. Before running anything they check that each git
directory's HEAD is the pinned commit and that the LLaDA modeling code (`llada/model/` of
Fast-dLLM) has the pinned sha256, and refuse in one line naming the flag otherwise.

  python benchmarks/references.py   # prints "folder url commit" per repository (for the script)
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

ENVIRONMENT = "REMDM_REFERENCES"
PREPARE = "benchmarks/prepare_references.sh DIR"

# name -> (folder under DIR, public URL, pinned commit)
REPOSITORIES = {
    "llada": ("LLaDA", "https://github.com/ML-GSAI/LLaDA",
              "b7e6c3565f194352da44b38dd12b6970597309f3"),
    "fast_dllm": ("Fast-dLLM", "https://github.com/NVlabs/Fast-dLLM",
                  "24cc59e75f20a6384bae8c905965bb090b96388e"),
    "remdm_llada": ("ReMDM-LLaDA", "https://github.com/guanghanwang/ReMDM-LLaDA",
                    "169c9b9198dc1979582900cc6bb888d308bf9304"),
    "maskgit": ("maskgit", "https://github.com/google-research/maskgit",
                "1db23594e1bd328ee78eadcd148a19281cd0f5b8"),
}

# The reference LLaDA modeling package: `llada/model/` of Fast-dLLM at its pinned commit
# (the `LLaDAModelLM` of GSAI-ML/LLaDA-8B-Base with Fast-dLLM's key-value caches), by file.
MODELING_CODE = "Fast-dLLM/llada/model"
MODELING_SHA256 = {
    "modeling_llada.py": "570401f87af8b13854e07f9b231b0ac53a2ce8ef58fa1ee1a52f5f67506e902f",
    "configuration_llada.py": "5a58ffb848ee7fa18c34ca9289d13aaec062d40bae694caa69552689417f7b06",
    "__init__.py": "1e50c30889851f7c96b7e6a0cc220b9e939ac47f9395cf9ef275540d50cf7429",
}
PYTHON = "venv/bin/python"


def refuse(message: str):
  """Ends the benchmark with one `error:` line and exit code 2."""
  print(f"error: {message}", file=sys.stderr)
  raise SystemExit(2)


def folder(value: str | None) -> pathlib.Path:
  """The prepared folder: `--references`, else `$REMDM_REFERENCES`."""
  value = value or os.environ.get(ENVIRONMENT)
  if not value:
    refuse(f"--references: pass the folder that {PREPARE} prepared (or set {ENVIRONMENT})")
  return pathlib.Path(value)


def under(value, references: str | None, relative: str) -> pathlib.Path:
  """A flag's value, or `relative` under the prepared folder when the flag is not given."""
  return pathlib.Path(value) if value else folder(references) / relative


def add_flags(parser) -> None:
  """The flags of every benchmark that runs the reference LLaDA code: `--references`,
  `--reference-python` and `--reference-code` (`checked_reference_side` fills them in)."""
  parser.add_argument("--references", help=f"the folder that {PREPARE} prepared (default: "
                      f"${ENVIRONMENT}); the reference flags default to paths under it")
  parser.add_argument("--reference-python", help="a Python with torch and transformers "
                      f"(default: REFERENCES/{PYTHON})")
  parser.add_argument("--reference-code", type=pathlib.Path,
                      help="the folder `model` with configuration_llada.py and "
                      f"modeling_llada.py, checked by sha256 (default: REFERENCES/{MODELING_CODE})")


def checked_reference_side(args) -> None:
  """Sets `args.reference_python` and `args.reference_code` (under `--references` when not
  given) and refuses an interpreter that is missing or modeling code off its pinned sha256."""
  args.reference_python = under(args.reference_python, args.references, PYTHON)
  args.reference_code = under(args.reference_code, args.references, MODELING_CODE)
  check_python("--reference-python", args.reference_python)
  check_modeling("--reference-code", args.reference_code)


def check_python(flag: str, python) -> None:
  """Refuses unless `python` is an executable file."""
  if not (pathlib.Path(python).is_file() and os.access(python, os.X_OK)):
    refuse(f"{flag}={python}: no such interpreter (prepare one with {PREPARE})")


def check_commit(flag: str, name: str, git_dir) -> None:
  """Refuses unless the HEAD of `git_dir` (a clone or a bare mirror) is `name`'s pin."""
  _, url, commit = REPOSITORIES[name]
  done = subprocess.run(["git", "-C", str(git_dir), "rev-parse", "HEAD"], capture_output=True,
                        text=True)
  head = done.stdout.strip() if done.returncode == 0 else None
  if head != commit:
    found = f"HEAD is {head}, not" if head else "not a git directory at"
    refuse(f"{flag}={git_dir}: {found} the pinned {commit} of {url} (prepare it with "
           f"{PREPARE})")


def check_modeling(flag: str, code_dir) -> None:
  """Refuses unless each file of the modeling package has its pinned sha256."""
  for name, expected in MODELING_SHA256.items():
    path = pathlib.Path(code_dir) / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != expected:
      refuse(f"{flag}={code_dir}: {name} has sha256 {digest}, not the pinned {expected} "
             f"(llada/model of {REPOSITORIES['fast_dllm'][1]} at "
             f"{REPOSITORIES['fast_dllm'][2]}; prepare it with {PREPARE})")


if __name__ == "__main__":
  for folder_name, url, commit in REPOSITORIES.values():
    print(folder_name, url, commit)
  sys.exit(0)
