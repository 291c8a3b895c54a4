"""How the command lines end: one `error:` line and an exit code, never a traceback.

Exit codes:

- 0: finished;
- 1: a run failed (non-finite logits or loss);
- 2: bad input: flags, files, configs, models, or an optional extra not installed;
- 128 + signal number (130 SIGINT, 143 SIGTERM): stopped by a signal after saving (resumable).

`run_cli(main, argv)` maps exceptions to these; library code raises ordinary exceptions
(`ValueError` for bad input, `FloatingPointError` for non-finite numbers, `Stopped`).
"""

from __future__ import annotations

import signal
import sys
from typing import Callable


class Stopped(Exception):
  """A run ended early by a signal, after saving what it had done."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class HelpRequested(Exception):
  """`-h` / `--help`: the usage text is printed and the command exits 0."""

  def __init__(self, text: str):
    super().__init__(text)
    self.text = text


def _fail(message: str, code: int) -> int:
  print(f"error: {message}", file=sys.stderr, flush=True)
  return code


def not_a_command(module: str, commands: str) -> int:
  """What `python -m <module>` does for a library module that used to be run that way: one
  `error:` line naming the console script to run instead, and exit code 2 (never a silent
  success that did nothing)."""
  return _fail(f"python -m {module} is not a command; run {commands}", 2)


def run_cli(main: Callable[[list[str]], int], argv: list[str]) -> int:
  """Runs a command's `main(argv)` and turns its exceptions into an exit code and one line."""
  try:
    return main(argv)
  except HelpRequested as err:
    print(err.text)
    return 0
  except Stopped as err:
    return _fail(str(err), err.exit_code)
  except FloatingPointError as err:
    return _fail(str(err), 1)
  except (ValueError, ImportError) as err:   # ImportError: an optional extra not installed
    return _fail(str(err), 2)
  except OSError as err:
    where = f"{err.filename}: " if err.filename else ""
    return _fail(f"{where}{err.strerror or err}", 2)
  except KeyboardInterrupt:
    return _fail("interrupted (Ctrl-C)", 128 + signal.SIGINT)
