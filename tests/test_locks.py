"""One run per folder: `locks.hold` against other processes, killed holders and nesting."""

import os
import subprocess
import sys
import textwrap

import pytest

from remdm_jax.parallel import locks
from remdm_jax.errors import run_cli
from references.folders import lock_holder

_TAKER = textwrap.dedent("""
    import sys
    from remdm_jax.parallel import locks
    from remdm_jax.errors import run_cli
    def main(argv):
      with locks.hold(argv[0], "job"):
        print("took it")
      return 0
    sys.exit(run_cli(main, sys.argv[1:]))
""")


def test_a_second_process_cannot_take_a_held_folder(tmp_path):
  with locks.hold(tmp_path, "job"):
    taker = subprocess.run([sys.executable, "-c", _TAKER, str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
  assert taker.returncode == 2
  assert "took it" not in taker.stdout
  lines = taker.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ")
  assert f"pid {os.getpid()}" in lines[0] and "in use by another run" in lines[0]
  assert not (tmp_path / locks.LOCK_FILE).exists()     # removed on release


def test_the_lock_of_a_killed_run_is_free_and_the_message_names_thelock_holder(tmp_path):
  with lock_holder(tmp_path) as holder:
    with pytest.raises(locks.FolderInUse, match=rf"pid {holder.pid} on host .* since .*"
                       "command: .*"):
      with locks.hold(tmp_path, "workdir"):
        pass
  assert (tmp_path / locks.LOCK_FILE).exists()          # left behind, but no longer a lock
  with locks.hold(tmp_path, "workdir"):
    assert str(os.getpid()) in (tmp_path / locks.LOCK_FILE).read_text()


def test_nested_holds_and_secondary_processes(tmp_path):
  with locks.hold(tmp_path, "workdir"):
    with locks.hold(tmp_path, "workdir"):     # the same process may hold it again
      pass
    assert (tmp_path / locks.LOCK_FILE).exists()
  assert not (tmp_path / locks.LOCK_FILE).exists()
  with locks.hold(tmp_path, "workdir", primary=False):   # process > 0 of a run: no lock
    assert not (tmp_path / locks.LOCK_FILE).exists()


def test_busy_folder_is_exit_2_through_run_cli(tmp_path, capsys):
  def main(argv):
    with locks.hold(tmp_path, "workdir"):
      return 0

  with lock_holder(tmp_path) as holder:
    assert run_cli(main, []) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"pid {holder.pid}" in err
