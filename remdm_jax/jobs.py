"""Sampling jobs as library code: load a model, shard it, sample, write atomic shards, resume,
merge and evaluate. The command lines (`remdm-sample`, `remdm-merge`) only parse flags and call
`run_sampling_job` and `merge` / `evaluate_samples`.

A job directory holds
  manifest.json                         settings, model, seed and layout (written first)
  samples-{first:09d}-{stop:09d}.jsonl  one JSON record per sample, rows [first, stop)
Each process writes the rows its devices hold, to a temporary name that it then renames, so
a file under a final name is always complete. Example i is a pure function of (seed, i), so
a rerun after a kill skips the finished shards and ends with exactly the files of an
uninterrupted run. `merge` checks that every index is present and writes one file in index
order; `evaluate_samples` scores records with Gen PPL and entropy under a causal evaluator.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import pathlib
import re
import resource
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from remdm_jax import distributed, files
from remdm_jax.config import SamplerConfig
from remdm_jax.models.dit import DiT
from remdm_jax.tokenizers import encode_rows
from remdm_jax.guidance import GUIDANCE_FORMS
from remdm_jax.validation import check_choice, check_fields, check_range

GUIDANCE_KINDS = ("none", "cfg", "cbg")

SHIPPED_MODEL = pathlib.Path(importlib.resources.files("remdm_jax.shipped"), "shakespeare-mdlm")
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



def evaluate_samples(records: list[dict], evaluator, *, add_bos: bool = False,
                     batch_size: int = 32) -> dict:
  """Gen PPL and mean unigram entropy of the records' texts under a causal model folder.

  Raises:
    ValueError: `evaluator` is not a causal model folder, or a bad batch size.
  """
  from remdm_jax import eval as metrics
  from remdm_jax.checkpoint import load_model, load_tokenizer_name
  from remdm_jax.models import as_evaluator
  from remdm_jax.tokenizers import get_tokenizer
  check_range("batch_size", batch_size, 1)
  model = load_model(evaluator)
  if not isinstance(model, DiT) or not model.cfg.causal:
    raise ValueError(f"evaluator must be a causal model folder, {evaluator} is not")
  tokenizer = get_tokenizer(load_tokenizer_name(evaluator))
  logits_fn, _ = as_evaluator(model)
  texts = [r["text"] for r in records]
  return {"gen_ppl": metrics.gen_ppl(logits_fn, tokenizer, texts, model.cfg.max_length,
                                     batch_size, add_bos=add_bos),
          "entropy": metrics.mean_entropy([tokenizer.encode(text) for text in texts])}


@dataclasses.dataclass(frozen=True)
class SampleJob:
  """What a sampling job produces; sampler options live in `SamplerConfig` (`--sampler.*`)."""

  model: str = str(SHIPPED_MODEL)  # a model folder (trained, shipped or converted)
  num_samples: int = 4             # sequences to generate
  batch_size: int = 4              # sequences per jitted call (split over all devices)
  seed: int = 0                    # example i uses fold_in(key(seed), i)
  seq_len: int = 0                 # 0: the model's max_length
  prompt: str = ""                 # text placed after BOS in every sample
  prompt_file: str = ""            # one prompt per line, used in turn
  out: str = ""                    # job directory: manifest + atomic JSON-lines shards
  model_axis: int = 1              # devices sharing each parameter shard (tensor parallel)
  quiet: bool = False              # do not print the samples
  trajectory: bool = False         # records keep every step's ids and what it (re)masked
  class_label: int = -1            # class-conditional model: the class (-1: the null class);
                                   # with guidance, the target class
  guidance: str = "none"           # none | cfg (class_label against the null class) | cbg
                                   # (the null-class or plain model reweighted by classifier)
  gamma: float = 1.0               # guidance strength (0: unguided)
  classifier: str = ""             # cbg: a classifier folder (remdm-train objective classifier)
  guidance_form: str = "gradient"  # cbg: gradient (one call) or exact (L x V calls per step)

  def __post_init__(self):
    check_fields(self)
    for name in ("num_samples", "batch_size", "model_axis"):
      check_range(name, getattr(self, name), 1)
    check_range("seed", self.seed, 0)
    check_range("seq_len", self.seq_len, 0)
    check_range("class_label", self.class_label, -1)
    check_choice("guidance", self.guidance, GUIDANCE_KINDS)
    check_choice("guidance_form", self.guidance_form, GUIDANCE_FORMS)
    if self.prompt and self.prompt_file:
      raise ValueError("pass either prompt or prompt_file, not both")
    if self.guidance != "none" and self.class_label < 0:
      raise ValueError(f"guidance={self.guidance!r} needs class_label >= 0 (the target class)")
    if (self.guidance == "cbg") != bool(self.classifier):
      raise ValueError("guidance='cbg' needs a classifier folder, and a classifier folder "
                       f"needs guidance='cbg'; got guidance={self.guidance!r}, "
                       f"classifier={self.classifier!r}")

  def guidance_settings(self) -> dict:
    """The fields that choose the denoiser (recorded in the job's manifest)."""
    return {name: getattr(self, name) for name in
            ("class_label", "guidance", "gamma", "classifier", "guidance_form")}


@dataclasses.dataclass
class JobResult:
  """What `run_sampling_job` did on this process."""

  records: list[dict]        # the samples computed now by this process, in index order
  throughput: dict           # samples/s, tokens/s and peak memory of those batches
  directory: pathlib.Path | None  # the job directory, when `job.out` is set


def prompt_texts(job: SampleJob) -> list[str]:
  """The job's prompts: `prompt`, or the non-blank lines of `prompt_file`; [] for none."""
  if job.prompt_file:
    texts = [l for l in files.read_text(job.prompt_file, "prompt file").splitlines()
             if l.strip()]
    if not texts:
      raise ValueError(f"{job.prompt_file}: the prompt file holds no prompt (no non-blank "
                       "line)")
    return texts
  return [job.prompt] if job.prompt else []


def prompt_rows(texts: list[str], num_rows: int, tokenizer, seq_len: int) -> np.ndarray | None:
  """`[num_rows, seq_len] int32` templates (BOS, prompt ids, then masks; row i uses prompt
  `i mod len(texts)`), or None without prompts."""
  if not texts:
    return None
  rows, _ = encode_rows(tokenizer, texts, seq_len, fill=tokenizer.mask_id, what="prompt")
  return rows[np.arange(num_rows) % len(texts)]


def job_denoiser(job: SampleJob, model: DiT, classifier, mask_id: int):
  """The denoiser a job samples from: the model at `class_label` (or its null class, or a plain
  model), D-CFG of `class_label` against the null class, or D-CBG of the null-class (plain)
  model towards `class_label` with the classifier."""
  from remdm_jax.guidance import classifier_free_guidance, classifier_guidance
  from remdm_jax.models import as_classifier, as_denoiser
  if job.guidance == "cfg":
    return classifier_free_guidance(as_denoiser(model, label=job.class_label),
                                    as_denoiser(model), job.gamma)
  if job.guidance == "cbg":
    return classifier_guidance(as_denoiser(model), as_classifier(classifier),
                               target=job.class_label, gamma=job.gamma, mask_id=mask_id,
                               form=job.guidance_form)
  return as_denoiser(model, label=None if job.class_label < 0 else job.class_label)


def _check_guidance_models(job: SampleJob, model: DiT, classifier) -> None:
  """Clear errors for a class or classifier that does not fit the model."""
  classes = model.cfg.num_classes
  if job.guidance != "cbg" and job.class_label >= classes:
    raise ValueError(f"class_label must be in [0, {classes}) for this model "
                     f"({'not class-conditional' if not classes else f'{classes} classes'}), "
                     f"got {job.class_label}")
  if classifier is None:
    return
  if classifier.cfg.vocab_size != model.cfg.vocab_size:
    raise ValueError(f"the classifier's vocabulary ({classifier.cfg.vocab_size}) differs from "
                     f"the model's ({model.cfg.vocab_size})")
  if job.class_label >= classifier.cfg.num_classes:
    raise ValueError(f"class_label must be in [0, {classifier.cfg.num_classes}) for this "
                     f"classifier, got {job.class_label}")


def load_classifier(folder):
  """A classifier folder written by `remdm-train --train.objective=classifier`."""
  from remdm_jax.checkpoint import load_model
  from remdm_jax.models import NoisyClassifier
  classifier = load_model(folder)
  if not isinstance(classifier, NoisyClassifier):
    raise ValueError(f"{folder} is not a classifier folder (train one with "
                     "--train.objective=classifier)")
  return classifier


def load_sampling_model(folder):
  """`(model, tokenizer, tokenizer name)` of a masked diffusion model folder, checked to fit
  each other."""
  from remdm_jax.checkpoint import load_model, load_tokenizer_name
  from remdm_jax.tokenizers import get_tokenizer
  model = load_model(folder)
  if not isinstance(model, DiT):
    raise ValueError(f"{folder} is a classifier of noisy sequences; sampling needs a masked "
                     "diffusion model (a classifier serves D-CBG guidance)")
  if model.cfg.causal:
    raise ValueError(f"{folder} is a causal (autoregressive) model; sampling needs a masked "
                     "diffusion model (a causal one serves as the evaluator of remdm-merge)")
  tokenizer_name = load_tokenizer_name(folder)
  tokenizer = get_tokenizer(tokenizer_name)
  if tokenizer.vocab_size != model.cfg.vocab_size:
    raise ValueError(f"tokenizer vocabulary {tokenizer.vocab_size} does not match the "
                     f"model's {model.cfg.vocab_size}")
  return model, tokenizer, tokenizer_name


class StepProgress:
  """A progress bar over diffusion steps, advanced from inside the compiled sampler by a host
  callback (`sample_with_plan(on_step=...)`); shows steps/s and, per batch, tokens/s.

  Several devices may report the same step; the bar only moves forward to `offset + step + 1`.
  """

  def __init__(self, total_steps: int, enabled: bool):
    from tqdm import tqdm
    self.bar = tqdm(total=total_steps, desc="sample", unit="step", disable=not enabled)
    self.offset = 0   # steps of the batches before the current one
    self.done = 0     # steps finished or started so far

  def __call__(self, step) -> None:
    ahead = self.offset + int(step) + 1 - self.done
    if ahead > 0:
      self.done += ahead
      self.bar.update(ahead)

  def show_rate(self, tokens_per_s: float) -> None:
    """Adds the tokens/s of the finished batches to the bar."""
    self.bar.set_postfix(tokens_per_s=tokens_per_s)

  def close(self) -> None:
    self.bar.close()


def _record(index: int, row: np.ndarray, tokenizer, settings: dict, job: SampleJob) -> dict:
  return {"index": index, "seed": job.seed, "text": tokenizer.decode(row), "ids": row.tolist(),
          "settings": settings, "model": job.model}


def trajectory_record(trajectory, row: int) -> dict:
  """One example of a `Trajectory` as JSON: the time, the ids after each step and the
  positions each step unmasked and remasked."""
  pick = lambda a: np.asarray(a)[:, row]
  return {"t": np.asarray(trajectory.t).tolist(), "steps": pick(trajectory.steps).tolist(),
          "unmasked": [np.flatnonzero(s).tolist() for s in pick(trajectory.unmasked)],
          "remasked": [np.flatnonzero(s).tolist() for s in pick(trajectory.remasked)]}


def run_sampling_job(cfg: SamplerConfig, job: SampleJob, *, progress: bool = True) -> JobResult:
  """Samples `job.num_samples` sequences from `job.model` with `cfg`, sharded over every
  device (and process), writing shards to `job.out` when set and skipping finished ones.

  Everything is checked and the sampler compiled before the job folder is opened; a batch
  with non-finite logits stops the job before that batch is written.

  Raises:
    ValueError: a bad model folder, prompt, sequence length, batch split or a job folder
      holding another job. NonFiniteLogitsError: the model returned non-finite logits.
  """
  from flax import nnx

  from remdm_jax import sharding
  from remdm_jax.plan import build_plan
  from remdm_jax.sampling import NonFiniteLogitsError, nonfinite_message, sample_with_plan

  if job.out:
    files.check_writable_folder(job.out, "job")
  if job.trajectory and jax.process_count() > 1:
    raise ValueError("trajectory records need a single process (every step of every example "
                     "is gathered on the host)")
  model, tokenizer, tokenizer_name = load_sampling_model(job.model)
  classifier = load_classifier(job.classifier) if job.classifier else None
  _check_guidance_models(job, model, classifier)
  seq_len = job.seq_len or model.cfg.max_length
  check_range("seq_len", seq_len, 1, model.cfg.max_length,
              context=" (the model's max_length)")
  texts = prompt_texts(job)
  prompts = prompt_rows(texts, job.num_samples, tokenizer, seq_len)
  mesh = distributed.make_mesh(job.model_axis)
  batch_sharding = distributed.batch_sharding(mesh)
  if job.batch_size % mesh.shape["data"]:
    if jax.process_count() > 1:
      raise ValueError(f"batch_size must be a multiple of the {mesh.shape['data']} "
                       f"data-parallel devices with several processes, got {job.batch_size}")
    batch_sharding = None
  graphdef, state = nnx.split(model)
  state = sharding.shard_params(state, mesh)
  plan, rule = build_plan(cfg)
  num_steps = int(plan.table.t.shape[0])
  starts = range(0, job.num_samples, job.batch_size)
  bar = StepProgress(len(starts) * num_steps, progress and distributed.is_primary())

  def run(key, state, prompt, first):
    out = sample_with_plan(
        key, job_denoiser(job, nnx.merge(graphdef, state), classifier, tokenizer.mask_id),
        plan, rule, batch_size=job.batch_size,
        seq_len=seq_len, mask_id=tokenizer.mask_id, prompt=prompt, first_index=first,
        batch_sharding=batch_sharding, return_nonfinite=True,
        return_trajectory=job.trajectory, on_step=bar)
    tokens, nonfinite = (out.tokens, out.nonfinite) if job.trajectory else out
    nonfinite = jax.lax.with_sharding_constraint(nonfinite, NamedSharding(mesh, P()))
    return tokens, nonfinite, out if job.trajectory else None

  def prompt_block(first):
    if prompts is None:
      return None
    block = np.resize(prompts[first:first + job.batch_size], (job.batch_size, seq_len))
    return block if batch_sharding is None else distributed.put_global(block, batch_sharding)

  key = jax.random.key(job.seed)
  run = jax.jit(run).lower(key, state, prompt_block(0), np.int32(0)).compile()
  directory = None
  settings = cfg.options()
  if job.out:
    directory = open_job(job.out, {
        "model": job.model, "model_config": dataclasses.asdict(model.cfg),
        "tokenizer": tokenizer_name, "sampler": settings,
        "num_samples": job.num_samples, "batch_size": job.batch_size, "seed": job.seed,
        "seq_len": seq_len, "prompts": texts, "process_count": jax.process_count(),
        "device_count": jax.device_count(), "model_axis": job.model_axis,
        "trajectory": job.trajectory, "guidance": job.guidance_settings()})
  local_ranges = (distributed.local_row_ranges(batch_sharding, (job.batch_size, seq_len))
                  if batch_sharding else [(0, job.batch_size)])
  done = set(finished_shards(directory)) if directory else set()
  throughput, records = Throughput(seq_len), []
  try:
    for batch_index, first in enumerate(starts):
      bar.offset = batch_index * num_steps
      wanted = [(first + a, min(first + b, job.num_samples)) for a, b in local_ranges
                if first + a < job.num_samples]
      if directory and distributed.all_processes(all(r in done for r in wanted)):
        bar(num_steps - 1)
        continue
      tic = time.perf_counter()
      tokens, nonfinite, trajectory = run(key, state, prompt_block(first), np.int32(first))
      real = min(job.batch_size, job.num_samples - first)
      flags = np.asarray(nonfinite)[:real]
      if flags.any():
        raise NonFiniteLogitsError(f"model {job.model}: {nonfinite_message(flags, first)}; "
                                   "nothing of this batch was written")
      blocks = distributed.local_row_blocks(tokens)
      throughput.add(real, time.perf_counter() - tic)
      for start, rows in blocks:
        batch_records = [_record(first + start + i, row, tokenizer, settings, job)
                         for i, row in enumerate(rows) if first + start + i < job.num_samples]
        for i, record in enumerate(batch_records if trajectory is not None else []):
          record["trajectory"] = trajectory_record(trajectory, start + i)
        if directory and batch_records:
          files.write_atomic(shard_path(directory, batch_records[0]["index"],
                                        batch_records[-1]["index"] + 1),
                             shard_text(batch_records))
        records.extend(batch_records)
      bar.show_rate(throughput.summary()["tokens_per_s"])
  finally:
    bar.close()
  return JobResult(records=records, throughput=throughput.summary(), directory=directory)
