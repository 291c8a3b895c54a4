"""Sampling jobs that survive interruption: atomic shards, a manifest, resume and merge.

A job directory holds
  manifest.json                         settings, model, seed and layout (written first)
  samples-{first:09d}-{stop:09d}.jsonl  one JSON record per sample, rows [first, stop)
Each process writes the rows its devices hold, to a temporary name that it then renames, so
a file under a final name is always complete. Example i is a pure function of (seed, i), so
a rerun after a kill skips the finished shards and ends with exactly the files of an
uninterrupted run. `merge` checks that every index is present and writes one file in index
order (optionally with Gen PPL and entropy under a causal evaluator):

  remdm-merge DIR [--evaluator checkpoints/shakespeare-ar --add-bos]
"""

from __future__ import annotations

import json
import pathlib
import re
import resource
import sys

from remdm_jax import files
from remdm_jax.errors import ArgumentParser, run_cli
from remdm_jax.validation import check_range

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
    changed = sorted(k for k in set(previous) | set(manifest)
                     if previous.get(k) != manifest.get(k))
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


class Throughput:
  """Samples/s, tokens/s and peak memory of the batches actually computed."""

  def __init__(self, seq_len: int):
    self.seq_len, self.samples, self.seconds = seq_len, 0, 0.0

  def add(self, samples: int, seconds: float) -> None:
    self.samples += samples
    self.seconds += seconds

  def summary(self) -> dict:
    rate = self.samples / self.seconds if self.seconds else 0.0
    return {"samples_per_s": round(rate, 3), "tokens_per_s": round(rate * self.seq_len, 1),
            "peak_memory_mib": round(peak_memory_bytes() / 2 ** 20, 1)}


def peak_memory_bytes() -> int:
  """Peak bytes in use on this process's first device where the backend reports it (GPU,
  TPU), else the process's peak resident host memory (CPU)."""
  import jax
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


def _merge(argv: list[str]) -> int:
  parser = ArgumentParser(prog="remdm-merge", description="Merge a sampling job's shards into "
                   "DIR/samples.jsonl; optionally score them under a causal evaluator.")
  parser.add_argument("directory", help="the job directory (--job.out of remdm-sample)")
  parser.add_argument("--evaluator", default="", help="a causal model folder for Gen PPL")
  parser.add_argument("--add-bos", action="store_true",
                      help="prepend BOS when scoring (evaluators trained on BOS-led rows)")
  parser.add_argument("--batch-size", type=int, default=32, help="rows per evaluator call")
  args = parser.parse_args(argv)
  check_range("--batch-size", args.batch_size, 1)
  records = merge(args.directory)
  summary = {"samples": len(records)}
  if args.evaluator:
    summary.update(_evaluate(records, args))
  print(json.dumps(summary))
  return 0


def merge_main(argv: list[str] | None = None) -> int:
  """`remdm-merge DIR [--evaluator MODEL] [--add-bos]`: merge shards, optionally evaluate."""
  return run_cli(_merge, sys.argv[1:] if argv is None else argv)


def _evaluate(records: list[dict], args) -> dict:
  from remdm_jax import eval as metrics
  from remdm_jax.checkpoint import load_model, load_tokenizer_name
  from remdm_jax.models import as_evaluator
  from remdm_jax.tokenizers import get_tokenizer
  evaluator = load_model(args.evaluator)
  if not evaluator.cfg.causal:
    raise ValueError(f"--evaluator must be a causal model folder, {args.evaluator} is not")
  tokenizer = get_tokenizer(load_tokenizer_name(args.evaluator))
  logits_fn, _ = as_evaluator(evaluator)
  texts = [r["text"] for r in records]
  return {"gen_ppl": metrics.gen_ppl(logits_fn, tokenizer, texts, evaluator.cfg.max_length,
                                     args.batch_size, add_bos=args.add_bos),
          "entropy": metrics.mean_entropy([tokenizer.encode(text) for text in texts])}


if __name__ == "__main__":
  sys.exit(merge_main())
