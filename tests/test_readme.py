"""The Python snippets of the README and of the docs pages run as written.

Each document's ```python blocks run in order, in one namespace, from a folder that holds the
shipped checkpoints (as the repository root does). A block that is illustrative only (it needs
files that do not ship, or other hardware) is marked by the line `<!-- not run: REASON -->`
right before its fence; that marker is the only way a block is skipped. Python written in any
other fence (```py, ```{code-block} python) is refused, so no snippet is skipped silently.
"""

import contextlib
import io
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md"] + sorted(
    p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.relative_to(ROOT).parts)
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
_NOT_RUN = re.compile(r"<!-- not run: (?P<reason>\S[^>]*?) -->")
_OTHER_PYTHON = re.compile(r"^```(py|python3|\{code-block\} python|\{code\} python)\s*$", re.M)


def snippets(path: pathlib.Path) -> tuple[list[str], list[str]]:
  """`(code of the blocks that run, reasons of the blocks marked as not run)`."""
  run, skipped = [], []
  for match in _BLOCK.finditer("\n" + path.read_text()):
    marker = _NOT_RUN.search(match["before"])
    (skipped.append(marker["reason"]) if marker else run.append(match["code"]))
  return run, skipped


def _name(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT))


def test_every_python_block_is_run_or_marked():
  assert len(DOCUMENTS) > 10   # the README and the docs pages were found
  for path in DOCUMENTS:
    text = path.read_text()
    assert not _OTHER_PYTHON.search(text), f"{_name(path)}: write Python in ```python blocks"
    assert text.count("<!-- not run:") == len(snippets(path)[1]), (
        f"{_name(path)}: a '<!-- not run: REASON -->' marker must sit right before a "
        "```python fence")


# Documents whose snippets train a model, start device meshes or compile many samplers (ten
# seconds or more each): in the slow set.
TRAINING_DOCUMENTS = {ROOT / "docs" / "guides" / name
                      for name in ("training.md", "scale-out.md", "sampling.md", "models.md",
                                   "particles.md", "reasoning.md", "guidance.md", "numerics.md")}


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.slow) if p in TRAINING_DOCUMENTS else p
    for p in DOCUMENTS if snippets(p)[0]], ids=_name)
def test_python_snippets_run(path, tmp_path):
  (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
  namespace, out = {"__name__": "__snippets__"}, io.StringIO()
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    for number, code in enumerate(snippets(path)[0], 1):
      with contextlib.redirect_stdout(out):
        exec(compile(code, f"{_name(path)} (python block {number})", "exec"), namespace)
  finally:
    os.chdir(cwd)
  assert out.getvalue()   # every page prints what it shows
