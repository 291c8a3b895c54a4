"""The README's Python snippets run as written (in order, in one namespace, from a folder that
holds the shipped checkpoints), except one marked as needing files that do not ship."""

import contextlib
import io
import os
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)


def _snippets() -> list[str]:
  return [m["code"] for m in _BLOCK.finditer(README.read_text())
          if "not run by tests/test_readme.py" not in m["before"]]


def test_readme_python_snippets_run(tmp_path):
  snippets = _snippets()
  assert len(snippets) >= 4
  (tmp_path / "checkpoints").symlink_to(README.parent / "checkpoints")
  namespace, out = {}, io.StringIO()
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    for code in snippets:
      with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)
  finally:
    os.chdir(cwd)
  printed = out.getvalue()
  assert "remasks" in printed and "NELBO" in printed
  nelbo = float(re.search(r"NELBO ([0-9.]+)", printed).group(1))
  assert nelbo < 1.0    # it starts at log 4 = 1.386 (uniform over the 4 ids)
