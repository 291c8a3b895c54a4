"""One run at a time per folder: an advisory lock on a file inside the folder.

A training workdir, a sampling job folder and a conversion's destination are each owned by
one run while it works: `hold(folder, what)` takes an exclusive `fcntl.flock` on
`FOLDER/.lock` and writes who holds it (pid, host, start time, command line) into the file.
A second run that finds the lock taken stops with `FolderInUse` (a `ValueError`: exit code 2)
naming the holder. The kernel drops the lock when its process ends, however it ends, so a
file left behind by a killed run is not a lock: the next run takes it. The lock file is
removed when the run ends normally.

The cooperating processes of one multi-process run are one run: only the primary process
(`primary=True`, process 0) takes the lock; the others pass `primary=False`. A process that
already holds a folder's lock may enter `hold` for it again (nested holds are counted).
Not included: locks over network file systems without `flock` support (the error names the
folder).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys

import jax

from remdm_jax.parallel import distributed

LOCK_FILE = ".lock"
_HELD: dict[pathlib.Path, int] = {}   # lock file -> nesting depth, in this process


class FolderInUse(ValueError):
  """Another run holds the folder's lock."""


def _holder_text(fd: int) -> str:
  """What the holder wrote into the lock file, in words ("" when it wrote nothing yet)."""
  try:
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    info = json.loads(raw)
    return (f"pid {info['pid']} on host {info['host']} since {info['since']}, command: "
            f"{' '.join(info['argv'])}")
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that has not yet written its details"


def _holder_record() -> str:
  return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "argv": [pathlib.Path(sys.argv[0]).name, *sys.argv[1:]]
                     if sys.argv else []}) + "\n"


def _open_locked(path: pathlib.Path, folder: pathlib.Path, what: str) -> int:
  """A descriptor of `path` holding its exclusive lock; the file at `path` is the one locked
  (a holder that ended may have removed the file between our open and our lock)."""
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
      raise ValueError(f"{folder}: cannot create the lock file {LOCK_FILE} of the {what} "
                       f"folder ({err.strerror or err})") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      holder = _holder_text(fd)
      os.close(fd)
      if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise FolderInUse(f"{folder}: the {what} folder is in use by another run ({holder}); "
                          f"wait for it to end or use another {what} folder") from None
      raise ValueError(f"{folder}: cannot lock the {what} folder ({err.strerror or err})"
                       ) from None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)


def _write_holder(fd: int) -> None:
  """Records who holds the lock; best effort (a full disk must not stop the run here)."""
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_record().encode(), 0)
  except OSError:
    pass


def _shared_outcome(failure: Exception | None, folder, what: str) -> None:
  """Raises on every process of a multi-process run when process 0 could not take the lock
  (a collective there: each process calls it once per `hold`); in one process, raises
  `failure` if any."""
  if jax.distributed.is_initialized() and distributed.any_process(failure is not None):
    raise failure or FolderInUse(f"{folder}: process 0 could not take the lock of the {what} "
                                 "folder (its error names the holder); this process stops too")
  if failure is not None:
    raise failure


@contextlib.contextmanager
def hold(folder, what: str, *, primary: bool = True):
  """Holds the lock of `folder` (an existing folder) for the `with` block.

  Args:
    folder: the folder the run owns.
    what: its name in messages ("workdir", "job", "model").
    primary: False for every process of a multi-process run but process 0: they take no lock
      but share process 0's outcome (when it cannot lock, every process raises, so none runs
      on without the lock).

  Raises:
    FolderInUse: another run holds the lock (the message names its pid, host, start time and
      command line).
    ValueError: the lock file cannot be created or locked.
  """
  folder = pathlib.Path(folder)
  path = (folder / LOCK_FILE).resolve()
  nested = primary and path in _HELD
  fd, failure = None, None
  if primary and not nested:
    try:
      fd = _open_locked(path, folder, what)
    except ValueError as err:
      failure = err
  _shared_outcome(failure, folder, what)
  if fd is None:                        # another process's lock, or one this run holds
    if nested:
      _HELD[path] += 1
    try:
      yield
    finally:
      if nested:
        _HELD[path] -= 1
    return
  _write_holder(fd)
  _HELD[path] = 1
  try:
    yield
  finally:
    del _HELD[path]
    with contextlib.suppress(OSError):
      path.unlink()      # while still locked: a waiting opener then sees another file
    os.close(fd)
