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

import argparse
import json
import os
import pathlib
import re
import resource
import sys

MANIFEST = "manifest.json"
MERGED = "samples.jsonl"
_SHARD = re.compile(r"samples-(\d{9})-(\d{9})\.jsonl$")


def shard_path(directory: pathlib.Path, first: int, stop: int) -> pathlib.Path:
  return directory / f"samples-{first:09d}-{stop:09d}.jsonl"


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `text` to a temporary sibling, flushes it to disk, then renames it to `path`."""
  temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with temporary.open("w") as handle:
    handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())
  os.replace(temporary, path)


def remove_stale_temporaries(directory: pathlib.Path) -> None:
  """Deletes temporaries left by killed writers (never visible under a final name)."""
  for path in directory.glob(".samples-*.tmp-*"):
    path.unlink(missing_ok=True)


def open_job(directory, manifest: dict) -> pathlib.Path:
  """Creates the job directory and its manifest, or checks that a rerun matches it.

  Raises:
    ValueError: the directory holds a job with different settings (names the keys).
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / MANIFEST
  if path.exists():
    previous = json.loads(path.read_text())
    changed = sorted(k for k in set(previous) | set(manifest)
                     if previous.get(k) != manifest.get(k))
    if changed:
      raise ValueError(f"{directory} holds a sampling job with other settings (differs in "
                       f"{changed}); use another out directory")
  else:
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")
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


def merge(directory) -> list[dict]:
  """All records of a finished job in index order, written to `DIR/samples.jsonl`.

  Raises:
    ValueError: no manifest, or some index missing or duplicated.
  """
  directory = pathlib.Path(directory)
  if not (directory / MANIFEST).is_file():
    raise ValueError(f"{directory} is not a sampling job directory (no {MANIFEST})")
  total = json.loads((directory / MANIFEST).read_text())["num_samples"]
  records = []
  for first, stop in finished_shards(directory):
    lines = shard_path(directory, first, stop).read_text().splitlines()
    records.extend(json.loads(line) for line in lines)
  records.sort(key=lambda r: r["index"])
  indices = [r["index"] for r in records]
  if indices != list(range(total)):
    missing = sorted(set(range(total)) - set(indices))
    raise ValueError(f"{directory}: the job is not finished or is inconsistent: "
                     f"{len(missing)} of {total} samples missing (first: {missing[:5]}), "
                     f"{len(indices) - len(set(indices))} duplicated; rerun the same command")
  write_atomic(directory / MERGED, shard_text(records))
  return records


def merge_main(argv: list[str] | None = None) -> int:
  """`remdm-merge DIR [--evaluator MODEL] [--add-bos]`: merge shards, optionally evaluate."""
  parser = argparse.ArgumentParser(description=merge_main.__doc__)
  parser.add_argument("directory")
  parser.add_argument("--evaluator", default="", help="a causal model folder for Gen PPL")
  parser.add_argument("--add-bos", action="store_true",
                      help="prepend BOS when scoring (evaluators trained on BOS-led rows)")
  parser.add_argument("--batch-size", type=int, default=32)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    records = merge(args.directory)
    summary = {"samples": len(records)}
    if args.evaluator:
      summary.update(_evaluate(records, args))
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


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
