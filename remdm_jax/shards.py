"""A sampling job's folder: its manifest, its atomic JSON-lines shards, and their merge.

A job directory holds `manifest.json` (settings, model, seed and layout; written first) and
`samples-{first:09d}-{stop:09d}.jsonl` shards (one JSON record per sample, rows
`[first, stop)`). Each process writes the rows its devices hold, to a temporary name that it then renames, so
a file under a final name is always complete. `merge` checks that every index is present and
writes one file in index order.
"""

from __future__ import annotations

import json
import pathlib
import re

from remdm_jax import files

MANIFEST = "manifest.json"
MERGED = "samples.jsonl"
_SHARD = re.compile(r"samples-(\d{9})-(\d{9})\.jsonl$")


def shard_path(directory: pathlib.Path, first: int, stop: int) -> pathlib.Path:
  return directory / f"samples-{first:09d}-{stop:09d}.jsonl"


def remove_stale_temporaries(directory: pathlib.Path) -> None:
  """Deletes temporaries left by killed writers (never visible under a final name)."""
  for path in directory.glob(".samples-*.tmp-*"):
    path.unlink(missing_ok=True)


def open_job(directory, manifest: dict) -> pathlib.Path:
  """Creates the job directory and its manifest, or checks that a rerun matches it.

  Raises:
    ValueError: the directory holds a job with different settings (names the keys).
  """
  directory = files.check_writable_folder(directory, "job")
  path = directory / MANIFEST
  if path.exists():
    previous = files.read_json_object(path, "job manifest")
    changed = files.changed_keys(previous, manifest)
    if changed:
      raise ValueError(f"{directory} holds a sampling job with other settings (differs in "
                       f"{changed}); use another out directory")
  else:
    files.write_atomic(path, json.dumps(manifest, indent=2) + "\n")
  remove_stale_temporaries(directory)
  return directory


def finished_shards(directory: pathlib.Path) -> list[tuple[int, int]]:
  """`(first, stop)` of every complete shard in the directory, sorted."""
  ranges = []
  for path in directory.iterdir():
    match = _SHARD.match(path.name)
    if match:
      ranges.append((int(match.group(1)), int(match.group(2))))
  return sorted(ranges)


def shard_text(records: list[dict]) -> str:
  return "".join(json.dumps(record) + "\n" for record in records)


def _read_shard(path: pathlib.Path) -> list[dict]:
  """The records of one shard; a line that is not a JSON record is an error naming it."""
  records = []
  for number, line in enumerate(files.read_text(path, "shard").splitlines(), 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as err:
      raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("index"), int):
      raise ValueError(f"{path}: line {number} is not a sample record (no integer index)")
    records.append(record)
  return records


def merge(directory) -> list[dict]:
  """All records of a finished job in index order, written to `DIR/samples.jsonl`.

  Raises:
    ValueError: no manifest, a damaged shard, or some index missing, out of range or held by
      two shards (the shards are named).
  """
  directory = pathlib.Path(directory)
  if not (directory / MANIFEST).is_file():
    raise ValueError(f"{directory} is not a sampling job directory (no {MANIFEST})")
  total = files.read_json_object(directory / MANIFEST, "job manifest").get("num_samples")
  if not isinstance(total, int) or total < 1:
    raise ValueError(f"{directory / MANIFEST}: num_samples must be an integer >= 1, got "
                     f"{total!r}")
  owner = {}
  for first, stop in finished_shards(directory):
    path = shard_path(directory, first, stop)
    for record in _read_shard(path):
      index = record["index"]
      if index in owner:
        raise ValueError(f"{directory}: sample {index} is in two shards, "
                         f"{owner[index][0].name} and {path.name}; delete the one that "
                         "does not belong to this job and rerun the same command")
      if not 0 <= index < total:
        raise ValueError(f"{path}: sample index {index} is outside the job's "
                         f"[0, {total})")
      owner[index] = (path, record)
  missing = sorted(set(range(total)) - set(owner))
  if missing:
    raise ValueError(f"{directory}: the job is not finished: {len(missing)} of {total} "
                     f"samples missing (first: {missing[:5]}); rerun the same command")
  records = [owner[i][1] for i in range(total)]
  files.write_atomic(directory / MERGED, shard_text(records))
  return records
