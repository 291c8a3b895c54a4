"""A sampling job's folder: its manifest, its atomic JSON-lines shards, and their merge.

A job directory holds `manifest.json` (settings, model, seed and layout; written first) and
`samples-{first:09d}-{stop:09d}.jsonl` shards (one JSON record per sample, rows
`[first, stop)`). Each process writes the rows its devices hold, to a temporary name that it
then renames, so a file under a final name is always complete. Every record carries `"job"`,
the digest of the manifest it was written under (`manifest_digest`). `merge` checks that every
record belongs to the job (its digest, and its settings, seed and model against the manifest; a
record written before digests existed is checked by those fields alone), that every index is
present once, and writes one file in index order. A job folder is used by one run at a time
(`remdm_jax.parallel.locks`).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re

from remdm_jax import files
from remdm_jax.parallel import locks

MANIFEST = "manifest.json"
MERGED = "samples.jsonl"
_SHARD = re.compile(r"samples-(\d{9})-(\d{9})\.jsonl$")


# record field -> the manifest field it must equal
_BELONGS = {"settings": "sampler", "seed": "seed", "model": "model"}


def manifest_digest(manifest: dict) -> str:
  """The first 16 hex digits of the SHA-256 of the manifest's canonical JSON: what each
  record of the job carries as `"job"`."""
  text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def shard_path(directory: pathlib.Path, first: int, stop: int) -> pathlib.Path:
  """`DIR/samples-{first:09d}-{stop:09d}.jsonl`: the shard of rows `[first, stop)`."""
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
  changed = files.record_or_compare(directory / MANIFEST, manifest, "job manifest")
  if changed:
    raise ValueError(f"{directory} holds a sampling job with other settings (differs in "
                     f"{list(changed)}); use another out directory")
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


def _read_shard(path: pathlib.Path, manifest: dict, digest: str) -> list[tuple[int, dict]]:
  """`(line number, record)` of each record of one shard, each checked to be a sample record
  of this job, with an index in the shard's range; an error names the file, the line and
  what is wrong."""
  first, stop = (int(g) for g in _SHARD.match(path.name).groups())
  records = []
  for number, line in enumerate(files.read_text(path, "shard").splitlines(), 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as err:
      raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    index = record.get("index") if isinstance(record, dict) else None
    if not isinstance(index, int) or isinstance(index, bool):
      raise ValueError(f"{path}: line {number} is not a sample record (no integer index)")
    if not isinstance(record.get("text"), str):
      raise ValueError(f"{path}: line {number} is a damaged sample record (no text)")
    if not first <= record["index"] < stop:
      raise ValueError(f"{path}: line {number} holds sample {record['index']}, outside the "
                       f"shard's rows [{first}, {stop})")
    _check_belongs(record, manifest, digest, f"{path}: line {number}")
    records.append((number, record))
  return records


def _check_belongs(record: dict, manifest: dict, digest: str, where: str) -> None:
  """Raises unless the record was written under this manifest."""
  differs = [f for f, key in _BELONGS.items()
             if key in manifest and record.get(f) != manifest[key]]
  if "job" in record and record["job"] != digest:
    differs.insert(0, f"job digest {record['job']!r}, the manifest's is {digest!r}")
  if differs:
    raise ValueError(f"{where}: the sample does not belong to this job (differs from "
                     f"{MANIFEST} in {', '.join(differs)}); the shard comes from another "
                     "job: move it out and rerun the job's command to redo its samples")


def merge(directory) -> list[dict]:
  """All records of a finished job in index order, written to `DIR/samples.jsonl`.

  Holds the job folder's lock (`remdm_jax.parallel.locks`) while it reads and writes.

  Raises:
    ValueError: no manifest, a damaged shard, a record of another job (other settings, seed,
      model or manifest digest), or some index missing, out of range or held by two shards
      (the shards are named). `locks.FolderInUse`: a run is writing the job.
  """
  directory = pathlib.Path(directory)
  if not (directory / MANIFEST).is_file():
    raise ValueError(f"{directory} is not a sampling job directory (no {MANIFEST})")
  with locks.hold(directory, "job"):
    manifest = files.read_json_object(directory / MANIFEST, "job manifest")
    records = _merged_records(directory, manifest)
    files.write_atomic(directory / MERGED, shard_text(records))
  return records


def _merged_records(directory: pathlib.Path, manifest: dict) -> list[dict]:
  """Every record of the job's shards in index order, checked (see `merge`)."""
  total = manifest.get("num_samples")
  if not isinstance(total, int) or total < 1:
    raise ValueError(f"{directory / MANIFEST}: num_samples must be an integer >= 1, got "
                     f"{total!r}")
  digest, owner = manifest_digest(manifest), {}
  for first, stop in finished_shards(directory):
    path = shard_path(directory, first, stop)
    for number, record in _read_shard(path, manifest, digest):
      index = record["index"]
      if index in owner:
        raise ValueError(_twice(directory, index, owner[index][:2], (path, number)))
      if not 0 <= index < total:
        raise ValueError(f"{path}: sample index {index} is outside the job's "
                         f"[0, {total})")
      owner[index] = (path, number, record)
  missing = sorted(set(range(total)) - set(owner))
  if missing:
    raise ValueError(f"{directory}: the job is not finished: {len(missing)} of {total} "
                     f"samples missing (first: {missing[:5]}); rerun the same command")
  return [owner[i][2] for i in range(total)]


def _twice(directory: pathlib.Path, index: int, first: tuple, second: tuple) -> str:
  """The message for a sample held twice, `first` and `second` being `(shard, line)`: where
  both copies are, and a remedy that deletes no shard (a shard can hold the only copy of
  other samples)."""
  (one, line_one), (two, line_two) = first, second
  if one == two:
    return (f"{one}: sample {index} is written twice, at lines {line_one} and {line_two}; "
            f"delete one of those two lines only (the shard's other lines are the only copy "
            "of their samples) and merge again")
  return (f"{directory}: sample {index} is in two shards, {one.name} (line {line_one}) and "
          f"{two.name} (line {line_two}); move one shard out of the job folder (do not "
          "delete it: it may hold the only copy of other samples), rerun the same command "
          "to redo any rows it alone held, then merge again")
