"""Sampling jobs as library code: load a model, shard it, sample, write atomic shards, resume.
The command line (`remdm-sample`) only parses flags and calls `run_sampling_job`; the job
folder's manifest, shards and merge live in `remdm_jax.jobs.shards`, scoring in
`remdm_jax.jobs.scoring`.

Example i is a pure function of (seed, i), so a rerun after a kill skips the finished shards
and ends with exactly the files of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import pathlib
import resource
import time

import jax
import numpy as np
from tqdm import tqdm

from remdm_jax import files
from remdm_jax.parallel import distributed
from remdm_jax.parallel import locks
from remdm_jax.sampling.blocks import answer_start
from remdm_jax.weights.checkpoint import load_model, model_family
from remdm_jax.sampling.config import BlockConfig, SamplerConfig
from remdm_jax.guidance import Guidance, NoGuidance, check_guidance_inputs
from remdm_jax.models import DiT, LLaDA, NoisyClassifier, as_classifier, as_denoiser
from remdm_jax.registry import flat_options
from remdm_jax.sampling.checks import NonFiniteLogitsError, nonfinite_message
from remdm_jax.sampling.particles import ParticlesConfig
from remdm_jax.sampling.sampler import make_sampler
from remdm_jax.sampling.slots import SlotDecoder, make_slot_decoder
from remdm_jax.jobs.shards import (finished_shards, manifest_digest, open_job, shard_path,
                              shard_text)
from remdm_jax.text.tokenizers import Tokenizer, encode_rows
from remdm_jax.validation import check_fields, check_range, option

def shipped_models() -> pathlib.Path:
  """The shipped models: package data `remdm_jax.shipped` once installed, else the source
  tree's `checkpoints/` (the package run from a checkout)."""
  try:
    return pathlib.Path(importlib.resources.files("remdm_jax.shipped"))
  except ModuleNotFoundError:
    return pathlib.Path(__file__).resolve().parents[1] / "checkpoints"


SHIPPED_MODEL = shipped_models() / "shakespeare-mdlm"


class Throughput:
  """Samples/s, tokens/s, model calls and peak memory of the samples actually computed."""

  def __init__(self, seq_len: int):
    self.seq_len, self.samples, self.seconds = seq_len, 0, 0.0
    self.model_calls: int | None = None   # counted by the slot decoder only

  def add(self, samples: int, seconds: float) -> None:
    self.samples += samples
    self.seconds += seconds

  def summary(self) -> dict:
    """The job's closing numbers; `model_calls` is None where the decoder does not count them
    (the diffusion strategies, and block decoding with trajectories or particles)."""
    rate = self.samples / self.seconds if self.seconds else 0.0
    return {"samples_per_s": round(rate, 3), "tokens_per_s": round(rate * self.seq_len, 1),
            "model_calls": self.model_calls,
            "peak_memory_mib": round(peak_memory_bytes() / 2 ** 20, 1)}


def peak_memory_bytes() -> int:
  """Peak bytes in use on this process's first device where the backend reports it (GPU,
  TPU), else the process's peak resident host memory (CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclasses.dataclass(frozen=True)
class SampleJob:
  """What a sampling job produces; sampler options live in `SamplerConfig` or `BlockConfig`
  (`--sampler.*`), guidance in a `Guidance` (`--guidance.*`)."""

  model: str = option(str(SHIPPED_MODEL), "a model folder (trained, shipped or converted) or a "
                                          "released LLaDA folder (config.json, safetensors)")
  num_samples: int = option(4, "sequences to generate")
  batch_size: int = option(4, "sequences per jitted call (split over all devices)")
  seed: int = option(0, "example i uses fold_in(key(seed), i)")
  seq_len: int = option(0, "0: the model's max_length")
  prompt: str = option("", "text placed after BOS in every sample")
  prompt_file: str = option("", "one prompt per line, used in turn")
  chat: bool = option(False, "prompts as user turns of the folder's chat template (Instruct "
                             "models); else BOS + the prompt's ids")
  out: str = option("", "job directory: manifest + atomic JSON-lines shards")
  model_axis: int = option(1, "devices sharing each parameter shard (tensor parallel)")
  quiet: bool = option(False, "do not print the samples")
  trajectory: bool = option(False, "records keep every step's ids and what it (re)masked")
  class_label: int = option(-1, "class-conditional model: the class (-1: the null class); with "
                                "guidance, the target class")
  classifier: str = option("", "guidance cbg: a classifier folder (remdm-train objective "
                               "classifier)")

  def __post_init__(self):
    check_fields(self)
    for name in ("num_samples", "batch_size", "model_axis"):
      check_range(name, getattr(self, name), 1)
    check_range("seed", self.seed, 0)
    check_range("seq_len", self.seq_len, 0)
    check_range("class_label", self.class_label, -1)
    if self.prompt and self.prompt_file:
      raise ValueError("pass either prompt or prompt_file, not both")
    if self.chat and not (self.prompt or self.prompt_file):
      raise ValueError("chat=true applies the chat template to prompts; pass prompt or "
                       "prompt_file")

  @property
  def target(self) -> int | None:
    """The class: `class_label`, or None for the null class."""
    return None if self.class_label < 0 else self.class_label


@dataclasses.dataclass
class JobResult:
  """What `run_sampling_job` did on this process."""

  records: list[dict]        # the samples computed now by this process, in index order
  throughput: dict           # samples/s, tokens/s and peak memory of those batches
  directory: pathlib.Path | None  # the job directory, when `job.out` is set


def prompt_texts(job: SampleJob) -> list[str]:
  """The job's prompts: `prompt`, or the non-blank lines of `prompt_file` (UTF-8; a leading
  byte-order mark is dropped, never a prompt byte); [] for none."""
  if job.prompt_file:
    text = files.read_text(job.prompt_file, "prompt file", encoding="utf-8-sig")
    texts = [l for l in text.splitlines() if l.strip()]
    if not texts:
      raise ValueError(f"{job.prompt_file}: the prompt file holds no prompt (no non-blank "
                       "line)")
    return texts
  return [job.prompt] if job.prompt else []


def prompt_rows(texts: list[str], num_rows: int, tokenizer: Tokenizer, seq_len: int, *,
                chat: bool = False) -> np.ndarray | None:
  """`[num_rows, seq_len] int32` templates (row i uses prompt `i mod len(texts)`: BOS and its
  ids, or with `chat` the ids of the tokenizer's chat template around it as a user turn,
  generation prompt included; then masks), or None without prompts. A prompt is text: a
  special token's string in it (`"<|mdm_mask|>"`) is encoded as characters, not as its id.

  Raises:
    ValueError: `chat` with a tokenizer that has no chat template; a prompt longer than
      `seq_len`.
  """
  if not texts:
    return None
  if chat and not callable(getattr(tokenizer, "encode_chat", None)):
    raise ValueError("chat=true needs a model folder whose tokenizer has a chat template "
                     "(a released Instruct folder); this model's tokenizer has none")
  user_turn = lambda text: tokenizer.encode_chat([{"role": "user", "content": text}])
  rows, _ = encode_rows(tokenizer, texts, seq_len, fill=tokenizer.mask_id, bos=not chat,
                        what="prompt", encode=user_turn if chat else None)
  return rows[np.arange(num_rows) % len(texts)]


def job_denoiser(job: SampleJob, guidance: Guidance, model: DiT | LLaDA, classifier,
                 mask_id: int):
  """The denoiser a job samples: `guidance` applied to the model (at `job.class_label`, or its
  null class) with the job's classifier (a `NoisyClassifier` for `Cbg`, else None)."""
  return guidance.denoiser(lambda label: as_denoiser(model, label=label), target=job.target,
                           classifier=None if classifier is None else as_classifier(classifier),
                           mask_id=mask_id)


def _check_guidance_models(job: SampleJob, guidance: Guidance, model: DiT | LLaDA,
                           classifier) -> None:
  """Clear errors for a class or classifier that does not fit the model."""
  classes = getattr(model.cfg, "num_classes", 0)   # LLaDA: not class-conditional
  if guidance.name != "cbg" and job.class_label >= classes:
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


def load_classifier(folder, mesh=None):
  """A classifier folder written by `remdm-train --train.objective=classifier`, placed on
  `mesh` when given."""
  classifier = load_model(folder, mesh=mesh)
  if not isinstance(classifier, NoisyClassifier):
    raise ValueError(f"{folder} is not a classifier folder (train one with "
                     "--train.objective=classifier)")
  return classifier


@dataclasses.dataclass(frozen=True)
class SamplingModel:
  """A masked diffusion model of a registered family, with what a job needs to know about it."""

  model: DiT | LLaDA
  tokenizer: Tokenizer
  tokenizer_name: str     # as recorded in the manifest: "bytes", "gpt2" or a folder
  max_length: int         # the longest sequence the model takes


def load_sampling_model(folder, mesh=None) -> SamplingModel:
  """The model of a folder (of any registered family: a DiT, a released LLaDA folder, ...)
  with its tokenizer, checked to fit each other, and split over `mesh` as it is read when
  given.

  Raises:
    ValueError: a folder no family recognises, a classifier or causal model folder, or a
      tokenizer that does not fit.
  """
  family, folder = model_family(folder), pathlib.Path(folder)
  tokenizer = family.tokenizer(folder)   # first: a missing extra or file before 16 GB are read
  model = family.load(folder, mesh=mesh)
  family.check_sampling(folder, model, tokenizer)
  if tokenizer.vocab_size != model.cfg.vocab_size:
    raise ValueError(f"tokenizer vocabulary {tokenizer.vocab_size} does not match the "
                     f"model's {model.cfg.vocab_size}")
  return SamplingModel(model, tokenizer, family.tokenizer_name(folder),
                       family.max_length(model))


def _replicate_unplaced(tree, mesh):
  """`tree` with every leaf not yet on `mesh` (guidance strength, target) replicated over it;
  leaves already placed (the weights) stay as they are."""
  def place(leaf):
    on_mesh = isinstance(getattr(leaf, "sharding", None), jax.sharding.NamedSharding) and \
        leaf.sharding.mesh == mesh
    return leaf if on_mesh else jax.device_put(
        leaf, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return jax.tree.map(place, tree)


class StepProgress:
  """A progress bar over diffusion steps, advanced from inside the compiled sampler by a host
  callback (`make_sampler(on_step=...)`); shows steps/s and, per batch, tokens/s.

  Several devices may report the same step; the bar only moves forward to `offset + step + 1`.
  """

  def __init__(self, total_steps: int, enabled: bool):
    self.bar = tqdm(total=total_steps, desc="sample", unit="step", disable=not enabled)
    self.offset = 0   # steps of the batches before the current one
    self.done = 0     # steps finished or started so far

  def set_total(self, total_steps: int) -> None:
    """The number of steps of the whole job, once the compiled sampler knows it."""
    self.bar.total = total_steps
    self.bar.refresh()

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


def _record(index: int, row: np.ndarray, tokenizer, settings: dict, job: SampleJob,
            digest: str | None) -> dict:
  """One sample as JSON; `job` is the digest of the job folder's manifest (with a folder)."""
  record = {"index": index, "seed": job.seed, "text": tokenizer.decode(row), "ids": row.tolist(),
            "settings": settings, "model": job.model}
  return record if digest is None else {**record, "job": digest}


def trajectory_record(trajectory, row: int) -> dict:
  """One example of a `Trajectory` as JSON: the time, the ids after each step and the
  positions each step unmasked and remasked."""
  pick = lambda a: np.asarray(a)[:, row]
  return {"t": np.asarray(trajectory.t).tolist(), "steps": pick(trajectory.steps).tolist(),
          "unmasked": [np.flatnonzero(s).tolist() for s in pick(trajectory.unmasked)],
          "remasked": [np.flatnonzero(s).tolist() for s in pick(trajectory.remasked)]}


def _widest_first(prompts, batch_size: int, mask_id: int):
  """The first batch's prompt rows, its first row replaced by the job's row of the longest
  masked tail (None for no prompts): block decoding compiles its scan for the longest answer
  of the job, so later batches reuse the executable."""
  if prompts is None:
    return None
  rows = np.array(prompts[:batch_size])
  rows[0] = prompts[int(np.argmin(answer_start(np.asarray(prompts), mask_id)))]
  return rows


def _batch_sharding(job: SampleJob, mesh):
  """The batch split over the mesh's "data" devices; None (one device computes the batch)
  when `batch_size` does not divide over them, which only a single process allows."""
  if job.batch_size % mesh.shape["data"] == 0:
    return distributed.batch_sharding(mesh)
  if jax.process_count() > 1:
    raise ValueError(f"batch_size must be a multiple of the {mesh.shape['data']} "
                     f"data-parallel devices with several processes, got {job.batch_size}")
  return None


def _write_batch(job: SampleJob, first: int, tokens, trajectory, tokenizer, settings: dict,
                 directory, digest: str | None) -> list[dict]:
  """The records of the rows of one batch (`tokens [B, L] int32`, from global index `first`)
  that this process holds; each block is written as a shard, atomically, when the job has a
  folder."""
  records = []
  for start, rows in distributed.local_row_blocks(tokens):
    block = [_record(first + start + i, row, tokenizer, settings, job, digest)
             for i, row in enumerate(rows) if first + start + i < job.num_samples]
    for i, record in enumerate(block if trajectory is not None else []):
      record["trajectory"] = trajectory_record(trajectory, start + i)
    if directory and block:
      files.write_atomic(shard_path(directory, block[0]["index"], block[-1]["index"] + 1),
                         shard_text(block))
    records.extend(block)
  return records


Config = SamplerConfig | BlockConfig   # a sampling job's sampler: diffusion steps or blocks


def run_sampling_job(cfg: Config, job: SampleJob, guidance: Guidance = NoGuidance(), *,
                     particles: ParticlesConfig = ParticlesConfig(),
                     progress: bool = True) -> JobResult:
  """Samples `job.num_samples` sequences from `job.model` with `cfg` (and `guidance`, and
  `particles`: one chosen sequence per sample), sharded over every device (and process),
  writing shards to `job.out` when set and skipping finished ones.

  Everything is checked and the sampler compiled before the job folder is opened; a batch
  with non-finite logits stops the job before that batch is written.

  Raises:
    ValueError: a bad model folder, prompt, sequence length, batch split, guidance or a job
      folder holding another job. NonFiniteLogitsError: the model returned non-finite logits.
    locks.FolderInUse: another run is using the job folder (named: pid, host, start,
      command); the processes of one multi-process job share process 0's lock.
  """
  if job.out:
    files.check_writable_folder(job.out, "job")
  with (locks.hold(job.out, "job", primary=distributed.is_primary()) if job.out
        else contextlib.nullcontext()):
    return _run_job(cfg, job, guidance, particles, progress)


@dataclasses.dataclass(frozen=True)
class _Run:
  """A job ready to sample: its model loaded and checked, its sampler compiled."""

  job: SampleJob
  loaded: SamplingModel
  seq_len: int
  texts: list[str]                 # the prompts' text, as the manifest records them
  prompts: np.ndarray | None       # [num_samples, seq_len] int32 templates, or None
  batch_sharding: object           # a NamedSharding of the batch, or None (one device)
  sampler: object                  # the compiled `Sampler`, or a `SlotDecoder`
  params: object                   # the denoiser's parameters, on the mesh
  key: jax.Array
  bar: "StepProgress | None"       # advanced by the sampler, step by step (None: slots)


def _check_job(job: SampleJob, guidance: Guidance) -> None:
  """What is refused before any file is read."""
  if job.trajectory and jax.process_count() > 1:
    raise ValueError("trajectory records need a single process (every step of every example "
                     "is gathered on the host)")
  check_guidance_inputs(guidance, target=job.target, has_classifier=bool(job.classifier))


def _prompt_block(job: SampleJob, rows, seq_len: int, batch_sharding):
  """`[batch_size, seq_len] int32` prompt rows of one batch (None for none), repeated to the
  batch's size and placed over its devices."""
  if rows is None:
    return None
  block = np.resize(rows, (job.batch_size, seq_len))
  return block if batch_sharding is None else distributed.put_global(block, batch_sharding)


def uses_slots(cfg: Config, job: SampleJob, particles: ParticlesConfig) -> bool:
  """Whether the job decodes its prompts as a queue in `batch_size` slots, each row at its own
  pace (`remdm_jax.sampling.slots`): block decoding without trajectories or particles (those
  run the lockstep decoder, batch by batch). Either way example `i` is the same."""
  return isinstance(cfg, BlockConfig) and not job.trajectory and particles.kind == "none"


def _prepare(cfg: Config, job: SampleJob, guidance: Guidance, particles: ParticlesConfig,
             progress: bool) -> _Run:
  """Loads and checks the model, classifier and prompts, and compiles the sampler (the slot
  decoder checks its queue here; `_sample_queue` compiles it for the prompts left to do)."""
  mesh = distributed.make_mesh(job.model_axis)
  batch_sharding = _batch_sharding(job, mesh)
  loaded = load_sampling_model(job.model, mesh)   # placed once: the two inputs of D-CFG
  classifier = load_classifier(job.classifier, mesh) if job.classifier else None
  _check_guidance_models(job, guidance, loaded.model, classifier)   # share the weights
  seq_len = job.seq_len or loaded.max_length
  check_range("seq_len", seq_len, 1, loaded.max_length, context=" (the model's max_length)")
  texts = prompt_texts(job)
  mask_id = loaded.tokenizer.mask_id
  prompts = prompt_rows(texts, job.num_samples, loaded.tokenizer, seq_len, chat=job.chat)
  denoiser = job_denoiser(job, guidance, loaded.model, classifier, mask_id)
  params = _replicate_unplaced(denoiser.params, mesh)
  key = jax.random.key(job.seed)
  if uses_slots(cfg, job, particles):
    decoder = make_slot_decoder(denoiser, cfg, slots=job.batch_size, seq_len=seq_len,
                                mask_id=mask_id, batch_sharding=batch_sharding)
    decoder.check(_all_prompts(prompts, job.num_samples, seq_len, mask_id))
    return _Run(job, loaded, seq_len, texts, prompts, batch_sharding, decoder, params, key,
                None)
  bar = StepProgress(0, progress and distributed.is_primary())
  sampler = make_sampler(denoiser, cfg, batch_size=job.batch_size, seq_len=seq_len,
                         mask_id=mask_id, batch_sharding=batch_sharding,
                         return_nonfinite=True, return_trajectory=job.trajectory, on_step=bar,
                         particles=particles.method())
  widest = _widest_first(prompts, job.batch_size, mask_id)
  sampler.compile(key, params, _prompt_block(job, widest, seq_len, batch_sharding))
  return _Run(job, loaded, seq_len, texts, prompts, batch_sharding, sampler, params, key, bar)


def _manifest(run: _Run, cfg: Config, guidance: Guidance, particles: ParticlesConfig) -> dict:
  """What the job folder records: the model, sampler, prompts, devices and guidance (and the
  particle method, when there is one)."""
  job = run.job
  return {
      "model": job.model, "model_config": dataclasses.asdict(run.loaded.model.cfg),
      "tokenizer": run.loaded.tokenizer_name, "sampler": cfg.options(),
      "num_samples": job.num_samples, "batch_size": job.batch_size, "seed": job.seed,
      "seq_len": run.seq_len, "prompts": run.texts, **({"chat": True} if job.chat else {}),
      "process_count": jax.process_count(),
      "device_count": jax.device_count(), "model_axis": job.model_axis,
      "trajectory": job.trajectory,
      "guidance": {**flat_options(guidance), "class_label": job.class_label,
                   "classifier": job.classifier},
      **({"particles": particles.record()} if particles.kind != "none" else {})}


def _sample_batch(run: _Run, first: int, throughput: Throughput):
  """`(tokens [B, L] int32, trajectory or None)` of the batch from global index `first`.

  Raises:
    NonFiniteLogitsError: the model returned non-finite logits for a real row of it.
  """
  job, tic = run.job, time.perf_counter()
  rows = None if run.prompts is None else run.prompts[first:first + job.batch_size]
  out = run.sampler(run.key, run.params,
                    _prompt_block(job, rows, run.seq_len, run.batch_sharding),
                    first_index=first)
  tokens, nonfinite = (out.tokens, out.nonfinite) if job.trajectory else out
  real = min(job.batch_size, job.num_samples - first)
  flags = np.asarray(nonfinite)[:real]
  if flags.any():
    raise NonFiniteLogitsError(f"model {job.model}: {nonfinite_message(flags, first)}; "
                               "nothing of this batch was written")
  throughput.add(real, time.perf_counter() - tic)
  return tokens, out if job.trajectory else None


def _sample_batches(run: _Run, settings: dict, directory, digest: str | None
                    ) -> tuple[list[dict], Throughput]:
  """Samples every batch not already finished in the job folder, writing each; returns the
  records this process computed and their throughput."""
  job, bar = run.job, run.bar
  num_steps = run.sampler.num_steps()
  local_ranges = (distributed.local_row_ranges(run.batch_sharding, (job.batch_size, run.seq_len))
                  if run.batch_sharding else [(0, job.batch_size)])
  done = set(finished_shards(directory)) if directory else set()
  throughput, records = Throughput(run.seq_len), []
  for batch_index, first in enumerate(range(0, job.num_samples, job.batch_size)):
    bar.offset = batch_index * num_steps
    wanted = [(first + a, min(first + b, job.num_samples)) for a, b in local_ranges
              if first + a < job.num_samples]
    if directory and distributed.all_processes(all(r in done for r in wanted)):
      bar(num_steps - 1)
      continue
    tokens, trajectory = _sample_batch(run, first, throughput)
    records.extend(_write_batch(job, first, tokens, trajectory, run.loaded.tokenizer,
                                settings, directory, digest))
    bar.show_rate(throughput.summary()["tokens_per_s"])
  return records, throughput


def _all_prompts(prompts, num_samples: int, seq_len: int, mask_id: int) -> np.ndarray:
  """`[num_samples, seq_len] int32`: the job's prompt rows, or all masks without prompts."""
  if prompts is None:
    return np.full((num_samples, seq_len), mask_id, np.int32)
  return np.asarray(prompts, np.int32)


def _contiguous_runs(indices) -> list[list[int]]:
  """Sorted indices cut where they are not consecutive."""
  runs = []
  for index in sorted(indices):
    if runs and runs[-1][-1] == index - 1:
      runs[-1].append(index)
    else:
      runs.append([index])
  return runs


class _ShardWriter:
  """Records finished out of order, written as shards of consecutive indices once a run of
  them reaches `batch_size` (and all at the end), atomically, by the primary process."""

  def __init__(self, directory, batch_size: int):
    self.directory, self.batch_size = directory, batch_size
    self.pending: dict[int, dict] = {}

  def add(self, records: list[dict], *, flush: bool = False) -> None:
    self.pending.update((record["index"], record) for record in records)
    for run in _contiguous_runs(self.pending):
      if flush or len(run) >= self.batch_size:
        block = [self.pending.pop(i) for i in run]
        if self.directory and distributed.is_primary():
          files.write_atomic(shard_path(self.directory, run[0], run[-1] + 1),
                             shard_text(block))


def _sample_queue(run: _Run, settings: dict, directory, digest: str | None, progress: bool
                  ) -> tuple[list[dict], Throughput]:
  """Decodes every prompt not already in the job folder with the slot decoder, writing
  shards as runs of consecutive prompts finish; returns the records (on the primary process)
  and their throughput (with the model calls).

  Raises:
    NonFiniteLogitsError: the model returned non-finite logits for a prompt; the prompts of
      that synchronisation and the unwritten ones before it are not written.
  """
  job, decoder = run.job, run.sampler
  done = {i for a, b in (finished_shards(directory) if directory else []) for i in range(a, b)}
  todo = np.array([i for i in range(job.num_samples) if i not in done], np.int64)
  throughput, records = Throughput(run.seq_len), []
  if not len(todo):
    return records, throughput
  prompts = _all_prompts(run.prompts, job.num_samples, run.seq_len,
                         run.loaded.tokenizer.mask_id)[todo]
  writer = _ShardWriter(directory, job.batch_size)
  decoder.compile(run.key, prompts, todo, params=run.params)
  bar = tqdm(total=len(todo), desc="sample", unit="prompt",
             disable=not (progress and distributed.is_primary()))
  tic = time.perf_counter()

  def on_sync(positions, tokens, nonfinite):
    if nonfinite.any():
      raise NonFiniteLogitsError(f"model {job.model}: "
                                 f"{nonfinite_message(nonfinite, todo[positions])}")
    new = [_record(int(todo[p]), row, run.loaded.tokenizer, settings, job, digest)
           for p, row in zip(positions, tokens)]
    writer.add(new)
    if distributed.is_primary():
      records.extend(new)
    bar.update(len(new))
    bar.set_postfix(tokens_per_s=round(bar.n * run.seq_len / (time.perf_counter() - tic), 1))

  try:
    result = decoder(run.key, prompts, todo, params=run.params,
                     sync_every=decoder.steps_per_block, on_sync=on_sync)
  finally:
    bar.close()
  writer.add([], flush=True)
  throughput.add(len(todo), time.perf_counter() - tic)
  throughput.model_calls = result.model_calls
  return sorted(records, key=lambda record: record["index"]), throughput


def _run_job(cfg: Config, job: SampleJob, guidance: Guidance, particles: ParticlesConfig,
             progress: bool) -> JobResult:
  """The body of `run_sampling_job`, run while this run holds the job folder's lock."""
  _check_job(job, guidance)
  run = _prepare(cfg, job, guidance, particles, progress)
  manifest = _manifest(run, cfg, guidance, particles)
  directory = open_job(job.out, manifest) if job.out else None
  digest = manifest_digest(manifest) if job.out else None
  if isinstance(run.sampler, SlotDecoder):
    records, throughput = _sample_queue(run, cfg.options(), directory, digest, progress)
    return JobResult(records=records, throughput=throughput.summary(), directory=directory)
  num_batches = len(range(0, job.num_samples, job.batch_size))
  run.bar.set_total(num_batches * run.sampler.num_steps())
  try:
    records, throughput = _sample_batches(run, cfg.options(), directory, digest)
  finally:
    run.bar.close()
  return JobResult(records=records, throughput=throughput.summary(), directory=directory)
