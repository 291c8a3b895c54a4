"""remdm-jax's LLaDA block decoding against the reference PyTorch decoders, on tiny random
checkpoints: token identity at temperature 0, and CPU speed.

The reference side (`llada_decoding_reference_worker.py`) runs in a separate Python with torch
and transformers: it builds each checkpoint as `llada_reference.py` does (the reference
`LLaDAModelLM`, random float32 weights, `save_pretrained`), with the output projection 4x
sharper (some confidences above 0.9, so threshold decoding decodes several tokens per step)
and its mask-id row zero (the mask id's logit is exactly 0: the reference decoders take the
argmax over the whole vocabulary, the library never decodes the mask id; the softmax of both
still includes it). It runs the reference decoders unchanged, extracted from git checkouts
at pinned commits (`references.py`; `benchmarks/prepare_references.sh DIR` prepares them):
ML-GSAI/LLaDA `generate`, NVlabs/Fast-dLLM `generate` / `generate_with_prefix_cache` /
`generate_with_dual_cache` (threshold None or 0.9), and a temperature-0 transcription of
guanghanwang/ReMDM-LLaDA's `llada_remdm_sample` (in the worker). The library side loads each
folder with `load_llada(dir, dtype="float32")` and samples with `remdm_jax.sample` /
`make_sampler` and the "llada" strategy at temperature 0.

  benchmarks/prepare_references.sh DIR && export REMDM_REFERENCES=DIR
  python benchmarks/llada_decoding.py [--quick] [--references DIR] [--reference-python PY] \
      [--reference-code DIR] [--llada-repo GIT] [--fast-dllm-repo GIT] [--remdm-llada-repo GIT]
      [--workdir DIR]   (kept; a later run with the same plan reuses its reference results)

Each git directory must be at its pinned commit and the modeling code must have its pinned
sha256 (`references.py`); otherwise the run stops with one line naming the flag.

1. Identity (`low_confidence`, temperature 0) against ML-GSAI `generate`: one block, several
   blocks, classifier-free guidance (cfg 1.0), and steps that do not divide the block. Each
   library call decodes a batch of 3 prompts of different lengths (left-aligned: prompt, then
   masks to L = longest prompt + answer), the lengths differing by multiples of the block
   length, so each row's masked tail is whole blocks; the reference decodes each prompt alone
   with `gen_length` = that row's tail and the same steps per block.
2. ReMDM-LLaDA window (remdm_number 1 and 2, block 32, 32 steps per block, 2 blocks),
   batch 1, against the temperature-0 transcription.
3. Fast-dLLM: `generate` with threshold 0.9 (uncached), `generate_with_prefix_cache` and
   `generate_with_dual_cache` with threshold None and 0.9, against `kv_cache` "prefix" /
   "dual" (batch of 3 as in 1; the Fast-dLLM decoders take one prompt, so one reference call
   per row). Also the agreement of each cached library result with the uncached one.
4. (default, not with `--quick`) CPU speed: a 4 x 256 model, vocabulary 1024, prompt 32,
   answer 256, block 32, 32 steps per block; batch 1 and 8; one warm-up call, median of 3.
   The reference loop is ML-GSAI `generate` (it takes a batch of equal-length prompts); the
   Fast-dLLM decoders take one prompt, so they run at batch 1 only. Each library row also
   gets a floor: its model calls at the cost of the model's parts timed alone.

Exits non-zero when a token-identity check of 1-3 fails. The speed rows report whether the
batch-1 answers equal their reference's but never fail the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llada_reference  # noqa: E402  (the tiny configs)
import references  # noqa: E402  (the pinned reference code)

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "llada_decoding_reference_worker.py"
LOGIT_SCALE = 4.0
THREADS = 2

# name -> (reference LLaDAConfig fields over llada_reference.BASE, seed). Untied only: the
# mask-id row of the output projection is set to zero.
CHECKPOINTS = {
    "multi_head": ({**llada_reference.CONFIGS["multi_head"][0],
                    "max_sequence_length": 256}, 0),
    "grouped_query": ({**llada_reference.CONFIGS["grouped_query"][0],
                       "max_sequence_length": 256}, 1),
}
PERF_CHECKPOINT = ({"d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 4,
                    "mlp_hidden_size": 768, "vocab_size": 1024, "embedding_size": 1024,
                    "rope_theta": 500_000.0, "weight_tying": False,
                    "max_sequence_length": 512}, 7)


@dataclasses.dataclass(frozen=True)
class Case:
  """One identity check: a library config, its reference decoder and the prompts."""
  name: str
  reference: str                 # "llada" | "fast" | "fast_prefix" | "fast_dual" | "remdm"
  block: int                     # K
  steps: int                     # steps per block
  prompts: tuple[int, ...]       # prompt lengths; L = max + answer
  answer: int                    # answer length of the longest prompt
  cfg_scale: float = 0.0
  threshold: float = 0.0         # 0: none
  kv_cache: str = "none"
  remdm_number: int = 0
  baseline: str | None = None    # the library case without this option (same prompts)

  @property
  def length(self) -> int:
    return max(self.prompts) + self.answer

  def options(self) -> str:
    parts = [f"K={self.block}", f"S={self.steps}"]
    parts += [f"cfg={self.cfg_scale:g}"] if self.cfg_scale else []
    parts += [f"threshold={self.threshold:g}"] if self.threshold else []
    parts += [f"kv={self.kv_cache}"] if self.kv_cache != "none" else []
    parts += [f"remdm_number={self.remdm_number}"] if self.remdm_number else []
    return " ".join(parts)


RAGGED16 = (8, 24, 40)   # tails 96, 80, 64 with answer 64
CASES = (
    Case("one_block", "llada", 32, 32, (70, 38, 6), 32),
    Case("blocks", "llada", 16, 8, RAGGED16, 64),
    Case("cfg", "llada", 16, 8, RAGGED16, 64, cfg_scale=1.0, baseline="blocks"),
    Case("uneven_steps", "llada", 16, 6, (36, 20, 4), 32),
    Case("no_remdm", "llada", 32, 32, (12,), 64),
    Case("remdm_1", "remdm", 32, 32, (12,), 64, remdm_number=1, baseline="no_remdm"),
    Case("remdm_2", "remdm", 32, 32, (12,), 64, remdm_number=2, baseline="no_remdm"),
    Case("fast_uncached", "fast", 16, 8, RAGGED16, 64),
    Case("threshold", "fast", 16, 16, RAGGED16, 64, threshold=0.9),
    Case("prefix", "fast_prefix", 16, 8, RAGGED16, 64, kv_cache="prefix", baseline="blocks"),
    Case("dual", "fast_dual", 16, 8, RAGGED16, 64, kv_cache="dual", baseline="blocks"),
    Case("prefix_threshold", "fast_prefix", 16, 16, RAGGED16, 64, threshold=0.9,
         kv_cache="prefix", baseline="threshold"),
    Case("dual_threshold", "fast_dual", 16, 16, RAGGED16, 64, threshold=0.9,
         kv_cache="dual", baseline="threshold"),
)
REFERENCE_NAMES = {"llada": "ML-GSAI generate", "fast": "Fast-dLLM generate",
                   "fast_prefix": "Fast-dLLM prefix cache", "fast_dual": "Fast-dLLM dual cache",
                   "remdm": "ReMDM-LLaDA (t=0 transcription)"}

# Speed: (label, library options, reference decoder or None, batch sizes the reference runs).
PERF_PROMPT, PERF_ANSWER, PERF_BLOCK, PERF_STEPS = 32, 256, 32, 32
PERF_RUNS = (
    ("uncached", {}, "llada", (1, 8)),
    ("prefix cache", {"kv_cache": "prefix"}, "fast_prefix", (1,)),
    ("dual cache", {"kv_cache": "dual"}, "fast_dual", (1,)),
    ("threshold 0.9", {"threshold": 0.9}, "fast", (1,)),
    ("threshold 0.9 + dual cache", {"threshold": 0.9, "kv_cache": "dual"}, "fast_dual", (1,)),
)


# ---------------------------------------------------------------- the plan

def _prompts(case: Case, vocab: int, mask_id: int, checkpoint: int) -> list[list[int]]:
  """Random prompts (no mask id) of the case's lengths: the same for cases with the same
  lengths on one checkpoint, so a case and its baseline decode the same prompts."""
  rng = np.random.default_rng([checkpoint, *case.prompts])
  ids = [i for i in range(vocab) if i != mask_id]
  return [rng.choice(ids, size=p).tolist() for p in case.prompts]


def _reference_args(case: Case, tail: int) -> dict:
  blocks = tail // case.block
  args = {"gen_length": tail, "block_length": case.block, "steps": case.steps * blocks}
  if case.reference == "remdm":
    args["remdm_number"] = case.remdm_number
  elif case.reference == "llada":
    args["cfg_scale"] = case.cfg_scale
  else:
    args["threshold"] = case.threshold or None
  return args


def make_plan(args, workdir: pathlib.Path) -> dict:
  checkpoints, jobs = {}, []
  for index, (name, (fields, seed)) in enumerate(CHECKPOINTS.items()):
    vocab, mask_id = fields["vocab_size"], fields["vocab_size"] - 1
    probe = np.random.default_rng(50 + index).integers(0, vocab, (2, 40))
    probe[np.random.default_rng(60 + index).random(probe.shape) < 0.4] = mask_id
    checkpoints[name] = {"fields": fields, "seed": seed, "folder": str(workdir / name),
                         "probe_tokens": probe.tolist()}
    for case in CASES:
      prompts = _prompts(case, vocab, mask_id, index)
      for row, prompt in enumerate(prompts):
        jobs.append({"id": f"{name}/{case.name}/{row}", "checkpoint": name,
                     "reference": case.reference, "prompts": [prompt],
                     "args": _reference_args(case, case.length - len(prompt))})
  if not args.quick:
    fields, seed = PERF_CHECKPOINT
    vocab = fields["vocab_size"]
    probe = np.random.default_rng(70).integers(0, vocab - 1, (1, 40))
    checkpoints["perf"] = {"fields": fields, "seed": seed, "folder": str(workdir / "perf"),
                           "probe_tokens": probe.tolist()}
    prompts = np.random.default_rng(71).integers(0, vocab - 1, (8, PERF_PROMPT)).tolist()
    blocks = PERF_ANSWER // PERF_BLOCK
    for label, options, reference, batches in PERF_RUNS:
      for batch in batches:
        steps = PERF_BLOCK if "threshold" in options else PERF_STEPS
        run = {"gen_length": PERF_ANSWER, "block_length": PERF_BLOCK, "steps": steps * blocks}
        if reference != "llada":
          run["threshold"] = options.get("threshold")
        jobs.append({"id": f"perf/{label}/{batch}", "checkpoint": "perf",
                     "reference": reference, "prompts": prompts[:batch], "args": run,
                     "repeats": args.repeats})
  return {"reference_code": str(args.reference_code), "llada_repo": args.llada_repo,
          "fast_dllm_repo": args.fast_dllm_repo, "remdm_llada_repo": args.remdm_llada_repo,
          "logit_scale": LOGIT_SCALE, "threads": THREADS, "checkpoints": checkpoints,
          "jobs": jobs, "verbose": args.verbose}


# ---------------------------------------------------------------- library side

def library_config(case_or_options, steps: int | None = None, block: int | None = None):
  """The library's "llada" sampler config at temperature 0 for a `Case` (or speed options)."""
  import remdm_jax
  if isinstance(case_or_options, Case):
    case = case_or_options
    options = {"kv_cache": case.kv_cache, "threshold": case.threshold,
               "cfg_scale": case.cfg_scale, "remdm_number": case.remdm_number}
    steps, block = case.steps, case.block
  else:
    options = {"kv_cache": "none", "threshold": 0.0, "cfg_scale": 0.0, "remdm_number": 0,
               **case_or_options}
  return remdm_jax.sampler_config(
      "llada", num_steps=steps, block_length=block, remasking="low_confidence",
      temperature=0.0, remdm_start=-1, remdm_steps=-1, eos_id=-1, **options)


def _rows(prompts: list[list[int]], length: int, mask_id: int) -> np.ndarray:
  rows = np.full((len(prompts), length), mask_id, np.int32)
  for b, prompt in enumerate(prompts):
    rows[b, :len(prompt)] = prompt
  return rows


def _library_decode_steps(trajectory) -> np.ndarray | None:
  """`[B, L]`: per position, the last step (0-based) that unmasked it (`Trajectory.unmasked`),
  -1 for none; None when the trajectory cannot be read."""
  try:
    unmasked = np.asarray(trajectory.unmasked)   # [n, B, L]
  except AttributeError:
    return None
  if unmasked.ndim != 3:
    return None
  steps = np.arange(unmasked.shape[0])[:, None, None]
  return np.where(unmasked, steps, -1).max(axis=0)


def _first_difference(case, prompt_len, reference, library, ref_steps, lib_steps) -> str:
  """The first differing answer position: its block, both tokens, and the step within the
  block at which each side decoded it (reference: its model calls since the block's first;
  library: its steps since the block's first, skipped steps of threshold decoding included)."""
  diff = np.nonzero(reference != library)[0]
  if not diff.size:
    return ""
  pos = int(diff[0])
  block, where = pos // case.block, prompt_len + pos
  ref_steps = np.asarray(ref_steps)
  before = ref_steps[prompt_len + (block - 1) * case.block:prompt_len + block * case.block]
  ref_first = int(before.max()) + 1 if block else 0
  text = (f"answer pos {pos} (block {block}, offset {pos % case.block}): ref {int(reference[pos])}"
          f" lib {int(library[pos])} ({diff.size} positions differ); decoded at step "
          f"{int(ref_steps[where]) - ref_first} of the block by the reference")
  if lib_steps is not None:
    per_block = case.steps * (2 if case.remdm_number else 1)
    text += f", {int(lib_steps[where]) - block * per_block} by the library"
  return text


def check_identity(reference: dict, workdir: pathlib.Path) -> tuple[bool, dict]:
  """Runs every case in the library, prints the tables; (all identical, library answers)."""
  import jax
  import remdm_jax
  from remdm_jax.weights.llada_io import load_llada
  print(f"\njax {jax.__version__} ({jax.default_backend()}); reference: " + ", ".join(
      f"{k} {v}" for k, v in reference["versions"].items()))
  print("\n| checkpoint | probe logits [2, 40, V] max abs diff | max abs ref |\n|---|---|---|")
  models = {}
  for name in CHECKPOINTS:
    model = load_llada(workdir / name, dtype="float32")
    models[name] = model
    spec_tokens = np.array(json.loads((workdir / "plan.json").read_text())["checkpoints"]
                           [name]["probe_tokens"], np.int32)
    expected = np.load(workdir / name / "probe_logits.npy")
    got = np.asarray(jax.jit(lambda z: model(z))(spec_tokens))
    print(f"| {name} | {np.abs(got - expected).max():.2e} | {np.abs(expected).max():.2f} |")

  print("\n| checkpoint | case | reference | options | rows: prompt -> answer | ref calls | "
        "ref argmax = mask id | identical rows | first difference |")
  print("|---|---|---|---|---|---|---|---|---|")
  ok, answers, seconds = True, {}, {}
  results = reference["results"]
  for name, model in models.items():
    mask_id = reference["checkpoints"][name]["mask_id"]
    den = remdm_jax.models.as_denoiser(model)
    for case in CASES:
      jobs = [results[f"{name}/{case.name}/{row}"] for row in range(len(case.prompts))]
      prompts = [job["tokens"][0][:p] for job, p in zip(jobs, case.prompts)]
      rows = _rows(prompts, case.length, mask_id)
      start = time.perf_counter()
      try:
        sampler = remdm_jax.make_sampler(den, library_config(case), batch_size=len(rows),
                                         seq_len=case.length, mask_id=mask_id)
        out = np.asarray(sampler(jax.random.key(0), prompt=rows))
      except Exception as err:   # report and go on: the other cases still say something
        line = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"| {name} | {case.name} | {REFERENCE_NAMES[case.reference]} | "
              f"{case.options()} | | | | ERROR | {type(err).__name__}: {line} |")
        ok = False
        continue
      seconds[(name, case.name)] = time.perf_counter() - start
      answers[(name, case.name)] = [out[b, p:] for b, p in enumerate(case.prompts)]
      same, notes, lib_steps = 0, [], None
      for b, (job, p) in enumerate(zip(jobs, case.prompts)):
        ref = np.array(job["tokens"][0][p:])
        lib = out[b, p:]
        if np.array_equal(ref, lib):
          same += 1
          continue
        if lib_steps is None:   # only on a mismatch: the trajectory of the same call
          try:
            traced = remdm_jax.sample(jax.random.key(0), den, library_config(case),
                                      batch_size=len(rows), seq_len=case.length,
                                      mask_id=mask_id, prompt=rows, return_trajectory=True)
            lib_steps = _library_decode_steps(traced)
          except Exception:
            lib_steps = None
        notes.append(f"row {b}: " + _first_difference(
            case, p, ref, lib, job["decode_steps"],
            None if lib_steps is None else lib_steps[b]))
      ok &= same == len(jobs)
      tails = ", ".join(f"{p}->{case.length - p}" for p in case.prompts)
      calls = "/".join(str(job["nfe"]) for job in jobs)
      decoded_mask = sum(job["mask_decoded"] + job["mask_argmax"] for job in jobs)
      print(f"| {name} | {case.name} | {REFERENCE_NAMES[case.reference]} | {case.options()} | "
            f"{tails} | {calls} | {decoded_mask} | {same}/{len(jobs)} "
            f"{'yes' if same == len(jobs) else 'NO'} | {'; '.join(notes)} |")

  print("\nAgreement of library results with the library's result without the option (same "
        "prompts, steps per block and threshold): fraction of equal answer tokens per row. "
        "For the caches this is what the approximation changes; for cfg and ReMDM it shows "
        "the option did something.\n")
  print("| checkpoint | case | baseline | agreement per row | all rows |\n|---|---|---|---|---|")
  for name in models:
    for case in CASES:
      if case.baseline is None:
        continue
      got, base = answers.get((name, case.name)), answers.get((name, case.baseline))
      if got is None or base is None:
        print(f"| {name} | {case.name} | {case.baseline} | (not run) | |")
        continue
      fractions = [float(np.mean(a == c)) for a, c in zip(got, base)]
      total = float(np.mean(np.concatenate(got) == np.concatenate(base)))
      print(f"| {name} | {case.name} | {case.baseline} | "
            f"{', '.join(f'{f:.3f}' for f in fractions)} | {total:.3f} |")
  print("\nlibrary seconds per case (compile + one call): " + ", ".join(
      f"{n}/{c} {s:.1f}" for (n, c), s in seconds.items()))
  return ok, answers


# ---------------------------------------------------------------- speed

def _timed(call, repeats: int) -> tuple[float, float, object]:
  """(first call s, median of `repeats` later calls s, the last result)."""
  import jax
  start = time.perf_counter()
  result = jax.block_until_ready(call())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return first, statistics.median(times), result


def speed(reference: dict, workdir: pathlib.Path, repeats: int) -> None:
  """Times the reference decoders (from the worker's results) and the library on the speed
  workload, prints the table and the model's per-part costs."""
  import jax
  import remdm_jax
  from remdm_jax.weights.llada_io import load_llada
  model = load_llada(workdir / "perf", dtype="float32")
  mask_id = reference["checkpoints"]["perf"]["mask_id"]
  den = remdm_jax.models.as_denoiser(model)
  length = PERF_PROMPT + PERF_ANSWER
  blocks = PERF_ANSWER // PERF_BLOCK
  results = reference["results"]
  prompts = np.array(results["perf/uncached/8"]["tokens"])[:, :PERF_PROMPT]
  fields = PERF_CHECKPOINT[0]
  ref_load = max(job.get("load", float("nan")) for key, job in results.items()
                 if key.startswith("perf/"))
  load = f"{os.getloadavg()[0]:.1f} now, up to {ref_load:.1f} during the reference runs"
  print(f"\nSpeed (CPU, {os.cpu_count()} cores, 1-minute load average {load}; torch "
        f"{THREADS} threads): "
        f"{fields['n_layers']} x {fields['d_model']} LLaDA, {fields['n_heads']} heads, "
        f"V = {fields['vocab_size']}, prompt {PERF_PROMPT}, answer {PERF_ANSWER}, block "
        f"{PERF_BLOCK}, {PERF_STEPS} steps per block ({blocks * PERF_STEPS} steps without "
        f"threshold); one warm-up call, median of {repeats}.\n")

  costs = {batch: _model_costs(model, prompts[:batch], length, mask_id, repeats)
           for batch in (1, 8)}
  floors = {batch: _floors(cost, length) for batch, cost in costs.items()}

  print("| decoder | batch | model calls | seconds | steps/s | answer tokens/s | "
        "vs reference loop | cache speedup | same answers as its reference | floor / seconds "
        "| first call s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  loop = {b: results[f"perf/uncached/{b}"]["seconds"] for b in (1, 8)}
  # The uncached run each cached one is compared with: its threshold's, same side.
  plain = lambda options: "threshold 0.9" if "threshold" in options else "uncached"
  for label, options, kind, batches in PERF_RUNS:
    for batch in batches:
      job = results[f"perf/{label}/{batch}"]
      secs = job["seconds"]
      speedup = ""
      if "kv_cache" in options:
        speedup = f"{results[f'perf/{plain(options)}/{batch}']['seconds'] / secs:.2f}x"
      print(f"| reference {REFERENCE_NAMES[kind]}"
            f"{' thr 0.9' if options.get('threshold') else ''} | {batch} | {job['nfe']} | "
            f"{secs:.2f} | {job['nfe'] / secs:.1f} | {batch * PERF_ANSWER / secs:.0f} | "
            f"{loop[batch] / secs:.2f}x | {speedup} | | | |")
  library = {}
  for label, options, kind, batches in PERF_RUNS:
    steps = PERF_BLOCK if "threshold" in options else PERF_STEPS
    cfg = library_config(options, steps=steps, block=PERF_BLOCK)
    for batch in (1, 8):
      rows = _rows(prompts[:batch].tolist(), length, mask_id)
      try:
        sampler = remdm_jax.make_sampler(den, cfg, batch_size=batch, seq_len=length,
                                         mask_id=mask_id)
        first, secs, out = _timed(lambda: sampler(jax.random.key(0), prompt=rows), repeats)
      except Exception as err:
        print(f"| remdm-jax {label} | {batch} | ERROR {type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''} |")
        continue
      library[(label, batch)] = secs
      out = np.asarray(out)
      calls = blocks * steps
      if "threshold" in options:   # steps that unmasked something = model calls made
        try:
          traced = remdm_jax.sample(jax.random.key(0), den, cfg, batch_size=batch,
                                    seq_len=length, mask_id=mask_id, prompt=rows,
                                    return_trajectory=True)
          calls = int(np.asarray(traced.unmasked).any(axis=(1, 2)).sum())
        except Exception:
          calls = None
      speedup = ""
      if "kv_cache" in options and (plain(options), batch) in library:
        speedup = f"{library[(plain(options), batch)] / secs:.2f}x"
      ref_job = results.get(f"perf/{label}/{batch}")
      same = ""
      if ref_job is not None:
        ref = np.array(ref_job["tokens"])[:, PERF_PROMPT:]
        same = f"{float(np.mean(ref == out[:, PERF_PROMPT:])):.3f}"
      rate = f"{calls / secs:.1f}" if calls else ""
      floor = floors[batch](options.get("kv_cache", "none"), calls) if calls else None
      print(f"| remdm-jax {label} | {batch} | {calls if calls else '?'} | {secs:.2f} | "
            f"{rate} | {batch * PERF_ANSWER / secs:.0f} | {loop[batch] / secs:.2f}x | "
            f"{speedup} | {same} | {'' if floor is None else f'{floor / secs:.2f}'} | "
            f"{first:.1f} |")
  print("\nThe floor of a library row is its model calls at the cost of the model alone "
        "(jitted apart from the sampler, median of 5; an estimate: a ratio near or above 1 "
        "means the sampler adds nothing measurable): per block one full forward keeping the keys and values and "
        "the head on the block's rows, then per step the block's rows attending to the cache "
        "(dual), the rows from the block to the end (prefix: Fast-dLLM's window, exact "
        "per block), or the trunk on every row (uncached). Milliseconds per call:\n")
  print("| batch | trunk [B, L] | trunk + cache [B, L] | dual step [B, K] | prefix step "
        "[B, L - start], first / last block | head [B, K] | uncached floor s | prefix floor s "
        "| dual floor s |\n|---|---|---|---|---|---|---|---|---|")
  for batch, cost in costs.items():
    steps = blocks * PERF_STEPS
    print(f"| {batch} | {1e3 * cost['trunk']:.1f} | {1e3 * cost['prefill']:.1f} | "
          f"{1e3 * cost['dual']:.1f} | {1e3 * cost['prefix'][0]:.1f} / "
          f"{1e3 * cost['prefix'][-1]:.1f} | {1e3 * cost['head']:.2f} | "
          f"{floors[batch]('none', steps):.2f} | {floors[batch]('prefix', steps):.2f} | "
          f"{floors[batch]('dual', steps):.2f} |")


def _model_costs(model, prompts: np.ndarray, length: int, mask_id: int, repeats: int) -> dict:
  """Seconds per call of the library model's parts on the speed workload's shapes."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  z = np.full((len(prompts), length), mask_id, np.int32)
  z[:, :PERF_PROMPT] = prompts
  z = jnp.asarray(z)
  batch, times = len(prompts), max(repeats, 5)
  graphdef, state = nnx.split(model)   # parameters as arguments, as the sampler has them
  part = lambda name: jax.jit(lambda state, *a: getattr(nnx.merge(graphdef, state), name)(*a))
  median = lambda fn, *args: _timed(lambda: fn(state, *args), times)[1]
  trunk, prefill, head = part("features"), part("features_with_cache"), part("project")
  cached = jax.jit(lambda state, z, at, cache: nnx.merge(graphdef, state).features_cached(
      z, at, jnp.ones(at.shape, bool), cache))
  h, cache = prefill(state, z)
  rows = lambda start, width: jnp.broadcast_to(jnp.arange(start, start + width, dtype=jnp.int32),
                                               (batch, width))
  prefix = []
  for block in range(PERF_ANSWER // PERF_BLOCK):   # Fast-dLLM's window: block start to L
    start = PERF_PROMPT + block * PERF_BLOCK
    prefix.append(median(cached, z[:, start:], rows(start, length - start), cache))
  return {"trunk": median(trunk, z), "prefill": median(prefill, z),
          "dual": median(cached, z[:, PERF_PROMPT:PERF_PROMPT + PERF_BLOCK],
                         rows(PERF_PROMPT, PERF_BLOCK), cache),
          "prefix": prefix, "head": median(head, h[:, :PERF_BLOCK])}


def _floors(cost: dict, length: int):
  """`floor(kv_cache, calls)`: seconds of `calls` model calls (spread evenly over the
  blocks) at the costs of `_model_costs`."""
  blocks = PERF_ANSWER // PERF_BLOCK

  def floor(kv_cache: str, calls: int) -> float:
    if kv_cache == "none":
      return calls * (cost["trunk"] + cost["head"])
    later = (calls - blocks) / blocks   # later steps per block
    step = cost["prefix"] if kv_cache == "prefix" else [cost["dual"]] * blocks
    return sum(cost["prefill"] + later * s for s in step) + calls * cost["head"]
  return floor


# ---------------------------------------------------------------- main

def _same_plan(saved: dict | None, plan: dict) -> bool:
  """Whether a kept workdir's reference results answer `plan` (the worker's progress
  printing aside)."""
  strip = lambda p: {k: v for k, v in p.items() if k != "verbose"}
  return saved is not None and strip(saved) == strip(json.loads(json.dumps(plan)))


def _checked_references(args):
  """`args` with every reference path filled in (under `--references` when not given), each
  git directory at its pinned commit and the modeling code at its pinned sha256."""
  references.checked_reference_side(args)
  args.reference_python = str(args.reference_python)
  for name, (folder, _, _) in references.REPOSITORIES.items():
    flag = f"{name}_repo"
    setattr(args, flag, str(references.under(getattr(args, flag), args.references, folder)))
    references.check_commit(f"--{flag.replace('_', '-')}", name, getattr(args, flag))
  return args


def add_reference_flags(parser) -> None:
  """The reference side's flags: `references.add_flags` and one git directory per reference
  repository (`_checked_references` fills them in)."""
  references.add_flags(parser)
  for name, (folder, url, commit) in references.REPOSITORIES.items():
    parser.add_argument(f"--{name.replace('_', '-')}-repo", help=f"git directory of {url} "
                        f"at {commit[:7]}, checked (default: REFERENCES/{folder})")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_reference_flags(parser)
  parser.add_argument("--quick", action="store_true", help="identity checks only")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs per speed row")
  parser.add_argument("--workdir", type=pathlib.Path, help="kept when given, and its "
                      "reference results are reused by a later run with the same plan "
                      "(default: a temporary folder, removed at the end)")
  parser.add_argument("--verbose", action="store_true", help="the worker prints each job")
  args = _checked_references(parser.parse_args(argv))
  started = time.perf_counter()
  with tempfile.TemporaryDirectory() as scratch:
    workdir = (args.workdir or pathlib.Path(scratch)).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args, workdir)
    plan_path, out_path = workdir / "plan.json", workdir / "reference.json"
    saved = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    if args.workdir and out_path.is_file() and _same_plan(saved, plan):
      print(f"reference side: reusing {out_path} (same plan)")
    else:
      out_path.unlink(missing_ok=True)
      plan_path.write_text(json.dumps(plan))
      subprocess.run([args.reference_python, str(WORKER), "--plan", str(plan_path),
                      "--out", str(out_path)], check=True,
                     env=os.environ | {"TORCHDYNAMO_DISABLE": "1"})
      print(f"reference side: {time.perf_counter() - started:.0f} s")
    reference = json.loads(out_path.read_text())
    ok, _ = check_identity(reference, workdir)
    if not args.quick:
      speed(reference, workdir, args.repeats)
  print(f"\ntoken identity: {'pass' if ok else 'FAIL'} ({time.perf_counter() - started:.0f} s)")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
