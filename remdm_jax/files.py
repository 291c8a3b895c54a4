"""Reading and writing the project's files, with errors that name the file.

Every JSON or text file the library reads goes through `read_json` / `read_text`: a missing
file, a folder where a file should be, bad JSON or bad UTF-8 becomes a `ValueError` that starts
with the path (`cli.py` prints it as one `error:` line). Writes are atomic: a file (or a whole
folder) appears under its final name only when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil


def _describe(err: OSError) -> str:
  return err.strerror or type(err).__name__


@contextlib.contextmanager
def reading(path, what: str):
  """Turns the errors of reading `path` inside the block into one `ValueError` that starts
  with the path: `"<path>: no such <what>"`, `"is a folder"` or `"cannot read the <what>
  (<reason>)"`."""
  try:
    yield
  except IsADirectoryError:
    raise ValueError(f"{path}: is a folder, expected a {what}") from None
  except FileNotFoundError:
    raise ValueError(f"{path}: no such {what}") from None
  except OSError as err:
    raise ValueError(f"{path}: cannot read the {what} ({_describe(err)})") from None


def read_text(path, what: str = "file", encoding: str = "utf-8") -> str:
  """The UTF-8 text of `path` (`encoding="utf-8-sig"` also drops a leading byte-order mark).

  Raises:
    ValueError: `"<path>: <what> ..."` when it is missing, a folder, unreadable or not UTF-8.
  """
  path = pathlib.Path(path)
  try:
    with reading(path, what):
      return path.read_text(encoding=encoding)
  except UnicodeDecodeError as err:
    raise ValueError(f"{path}: the {what} is not UTF-8 text (byte {err.start})") from None


def read_json(path, what: str = "JSON file"):
  """The parsed JSON of `path`; errors name the file, line and column."""
  text = read_text(path, what)
  try:
    return json.loads(text)
  except json.JSONDecodeError as err:
    raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column "
                     f"{err.colno})") from None


def read_json_object(path, what: str = "JSON file") -> dict:
  """`read_json` that also requires a JSON object at the top level."""
  payload = read_json(path, what)
  if not isinstance(payload, dict):
    raise ValueError(f"{path}: expected a JSON object at the top level, got "
                     f"{type(payload).__name__}")
  return payload


def write_atomic(path, text: str | bytes) -> None:
  """Writes `text` (or bytes) to a temporary sibling, flushes it to disk, then renames it to
  `path`.

  Raises:
    OSError: the write failed (a full disk, ...); its filename is `path`, and the temporary
      is removed (nothing is left behind, `path` is unchanged).
  """
  path = pathlib.Path(path)
  temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with (temporary.open("wb") if isinstance(text, bytes)
          else temporary.open("w", encoding="utf-8")) as handle:
      handle.write(text)
      handle.flush()
      os.fsync(handle.fileno())
    os.replace(temporary, path)
  except BaseException as err:
    temporary.unlink(missing_ok=True)
    if isinstance(err, OSError):
      raise OSError(err.errno, f"cannot write the file ({_describe(err)})", str(path)) from None
    raise


def replace_folder(new: pathlib.Path, final: pathlib.Path) -> None:
  """Moves the complete folder `new` to `final`, replacing any folder there.

  The old folder is first renamed aside, so at every moment `final` is either absent, the
  old complete folder or the new one; an aside folder left by a crash is removed next time.
  """
  aside = final.with_name(f".{final.name}.old")
  shutil.rmtree(aside, ignore_errors=True)
  if final.exists():
    os.replace(final, aside)
  os.replace(new, final)
  shutil.rmtree(aside, ignore_errors=True)


def check_writable_folder(path, what: str) -> pathlib.Path:
  """Creates the folder `path` if needed; a clear error when it is a file or cannot be made."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"{path}: is a file, expected a folder for the {what}")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise ValueError(f"{path}: cannot create the {what} folder ({_describe(err)})") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f"{path}: the {what} folder is not writable")
  return path


def changed_keys(previous: dict, current: dict) -> list[str]:
  """The top-level keys whose values differ between two records (sorted): what makes a rerun
  in an existing job or work folder a different run."""
  return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def record_or_compare(path, record: dict, what: str) -> dict[str, tuple]:
  """Writes `record` (JSON) to `path` on a first run; on a rerun, compares it with the record
  found there.

  Returns:
    A dict mapping each key of `changed_keys` (sorted) to the pair (recorded value, value in
    `record`); empty on a first run or when the rerun matches.

  Raises:
    ValueError: the file at `path` is not a JSON object (naming `what`).
  """
  path = pathlib.Path(path)
  if not path.exists():
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return {}
  previous = read_json_object(path, what)
  return {k: (previous.get(k), record.get(k)) for k in changed_keys(previous, record)}
