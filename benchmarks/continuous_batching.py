"""Large-batch block decoding: lockstep batches against every row at its own pace and against
continuous batching, on a queue of prompts of mixed lengths (threshold decoding, dual cache),
beside Fast-dLLM's dual-cache decoder and ML-GSAI's loop at batch 1.

  python benchmarks/continuous_batching.py [--prompts 256] [--batches 1 16 64]
      [--models tiny perf] [--references DIR | --no-references] [--reference-prompts 8]

Rows, for each model and batch size B over the same N prompts (lengths uniform in
[8, 64], answers to L = 64 + 128, blocks of 32, 32 steps per block, threshold 0.9, dual
cache, temperature 0):

  (a) lockstep: `make_sampler` on consecutive batches of B prompts; a block takes as many
      steps as its slowest row, and the batch ends with its longest answer;
  (b) per row: the slot decoder on the same batches, each row at its own step (a batch still
      ends with its slowest row);
  (c) continuous: the slot decoder over the whole queue in B slots (a finished row's slot
      takes the next prompt at once).

Each prompt's tokens are those of its decode alone up to float rounding: a matrix product of
another shape (another batch size, the slot decoder's fused prefill and window call) rounds
differently, which flips a near-tie of two confidences now and then. The table gives the share
of prompts whose tokens equal those of (a) at batch 1. Tokens/s counts the answer tokens. Model calls of (a) are
the lockstep steps that unmasked something (counted from an untimed trajectory run); those of
(b) and (c) are the slot decoder's count. The floor is the model forward alone: each model
call at its cost inside a `lax.scan` of such calls (`forward_in_scan.py`; jitted alone a call
also pays its dispatch): a dual-cache window of B rows per step, and the prefill of each block
of each prompt at its cost per row at batch B (lockstep: a prefill of the whole batch per
block). floor / seconds near 1 means the decoder adds
nothing to the model's cost.

The reference rows run Fast-dLLM's `generate_with_dual_cache` (threshold 0.9) and ML-GSAI's
`generate` (uncached, no threshold: one token per step) unchanged, one prompt at a time (the
Fast-dLLM decoders take batch 1), on the first `--reference-prompts` prompts, through
`llada_decoding_reference_worker.py` (its reference side: `benchmarks/README.md`), which also
builds the random checkpoints (output projection 4x sharper, mask-id row zero). With
`--no-references` the library builds checkpoints of the same shapes itself and the reference
rows are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import forward_in_scan  # noqa: E402  (a checkpoint builder, a call's cost in a loop)
import llada_decoding  # noqa: E402  (checkpoints, the reference flags and worker)

PROMPT_RANGE, ANSWER, BLOCK, STEPS, THRESHOLD = (8, 64), 128, 32, 32, 0.9
MODELS = {"tiny": llada_decoding.CHECKPOINTS["multi_head"],
          "perf": llada_decoding.PERF_CHECKPOINT}


def make_prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
  """`count` random prompts of lengths in `PROMPT_RANGE` (ids below `vocab - 1`, the mask)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(PROMPT_RANGE[0], PROMPT_RANGE[1] + 1, count)
  return [rng.integers(0, vocab - 1, n).tolist() for n in lengths]


def rows_of(prompts, length: int, mask_id: int) -> np.ndarray:
  rows = np.full((len(prompts), length), mask_id, np.int32)
  for b, prompt in enumerate(prompts):
    rows[b, :len(prompt)] = prompt
  return rows


def reference_plan(args, workdir: pathlib.Path, models: dict, prompts: dict) -> dict:
  """The worker's plan: the checkpoints, then per model the first `reference_prompts`
  prompts through Fast-dLLM's dual cache (threshold 0.9) and ML-GSAI's loop, one at a time,
  one warm-up and one timed run each."""
  checkpoints, jobs = {}, []
  for name, (fields, seed) in models.items():
    probe = np.random.default_rng(70).integers(0, fields["vocab_size"] - 1, (1, 16))
    checkpoints[name] = {"fields": fields, "seed": seed, "folder": str(workdir / name),
                         "probe_tokens": probe.tolist()}
    for i, prompt in enumerate(prompts[name][:args.reference_prompts]):
      tail = PROMPT_RANGE[1] + ANSWER - len(prompt)
      blocks = -(-tail // BLOCK)
      run = {"gen_length": blocks * BLOCK, "block_length": BLOCK, "steps": STEPS * blocks}
      jobs.append({"id": f"{name}/fast_dual/{i}", "checkpoint": name,
                   "reference": "fast_dual", "prompts": [prompt],
                   "args": {**run, "threshold": THRESHOLD}, "repeats": 1})
      jobs.append({"id": f"{name}/llada/{i}", "checkpoint": name, "reference": "llada",
                   "prompts": [prompt], "args": run, "repeats": 1})
  return {"reference_code": str(args.reference_code), "llada_repo": args.llada_repo,
          "fast_dllm_repo": args.fast_dllm_repo, "remdm_llada_repo": args.remdm_llada_repo,
          "logit_scale": llada_decoding.LOGIT_SCALE, "threads": llada_decoding.THREADS,
          "checkpoints": checkpoints, "jobs": jobs, "verbose": False}


def model_costs(model, batch: int, length: int) -> dict:
  """Seconds per call, inside a `lax.scan` (`forward_in_scan.time_calls`: what a call costs
  in the decoder's loop, not jitted alone, which adds its dispatch), of a dual-cache window
  of `batch` rows and of the prefill of `batch` rows, each with the head on a block."""
  costs = forward_in_scan.time_calls(model, batch, steps=16, repeats=3, length=length)
  return {"prefill": costs["prefill [B, L]"]["scan"],
          "window": costs["dual window [B, 32]"]["scan"]}


def lockstep(den, cfg, rows: np.ndarray, batch: int, mask_id: int):
  """(a): `(seconds, tokens [N, L], model calls)` of consecutive batches through one compiled
  sampler (compiled for the longest answer first, untimed)."""
  import jax
  import remdm_jax
  sampler = remdm_jax.make_sampler(den, cfg, batch_size=batch, seq_len=rows.shape[1],
                                   mask_id=mask_id)
  widest = np.resize(rows[np.argmin((rows != mask_id).sum(1))][None], (batch, rows.shape[1]))
  sampler.compile(jax.random.key(0), prompt=widest)
  batches = [np.resize(rows[i:i + batch], (batch, rows.shape[1]))
             for i in range(0, len(rows), batch)]
  start, out = time.perf_counter(), []
  for i, block in enumerate(batches):
    out.append(np.asarray(sampler(jax.random.key(0), prompt=block, first_index=i * batch)))
  seconds = time.perf_counter() - start
  traced = remdm_jax.make_sampler(den, cfg, batch_size=batch, seq_len=rows.shape[1],
                                  mask_id=mask_id, return_trajectory=True)
  calls = sum(int(np.asarray(traced(jax.random.key(0), prompt=block, first_index=i * batch)
                             .unmasked).any(axis=(1, 2)).sum())
              for i, block in enumerate(batches))
  return seconds, np.concatenate(out)[:len(rows)], calls


def slots(den, cfg, rows: np.ndarray, batch: int, mask_id: int, *, continuous: bool):
  """(b) or (c): `(seconds, tokens [N, L], model calls, steps)` of the slot decoder over
  consecutive batches (b) or the whole queue (c), compiled first (untimed)."""
  import jax
  from remdm_jax.sampling.slots import make_slot_decoder
  decoder = make_slot_decoder(den, cfg, slots=batch, seq_len=rows.shape[1], mask_id=mask_id)
  queues = ([(rows, np.arange(len(rows)))] if continuous else
            [(rows[i:i + batch], np.arange(i, min(i + batch, len(rows))))
             for i in range(0, len(rows), batch)])
  for queue, indices in {len(q): (q, i) for q, i in queues}.values():
    decoder.compile(jax.random.key(0), queue, indices)
  start, results = time.perf_counter(), []
  for queue, indices in queues:
    results.append(decoder(jax.random.key(0), queue, indices))
  seconds = time.perf_counter() - start
  return (seconds, np.concatenate([r.tokens for r in results]),
          sum(r.model_calls for r in results), sum(r.iterations for r in results))


def run_model(name: str, folder: pathlib.Path, prompts, batches, reference) -> None:
  """The table of one model."""
  import remdm_jax
  from remdm_jax.weights.llada_io import load_llada
  model = load_llada(folder, dtype="float32")
  den, mask_id = remdm_jax.models.as_denoiser(model), model.cfg.mask_id
  length = PROMPT_RANGE[1] + ANSWER
  rows = rows_of(prompts, length, mask_id)
  answer_tokens = int((rows == mask_id).sum())
  row_blocks = [-(-(length - len(p)) // BLOCK) for p in prompts]
  blocks = sum(row_blocks)
  cfg = remdm_jax.sampler_config("llada", block_length=BLOCK, num_steps=STEPS, temperature=0.0,
                                 threshold=THRESHOLD, kv_cache="dual")
  print(f"\n### {name}: {model.cfg.n_layers} x {model.cfg.d_model} LLaDA, V = "
        f"{model.cfg.vocab_size}; {len(prompts)} prompts, {answer_tokens} answer tokens, "
        f"{blocks} blocks\n")
  print("| decoder | batch | seconds | answer tokens/s | model calls | calls per token | "
        "steps | floor s | floor / seconds | prompts as (a) at batch 1 |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  expected = None
  for batch in batches:
    cost = model_costs(model, batch, length)
    runs = {"(a) lockstep": lockstep(den, cfg, rows, batch, mask_id)}
    runs["(b) per row"] = slots(den, cfg, rows, batch, mask_id, continuous=False)
    runs["(c) continuous"] = slots(den, cfg, rows, batch, mask_id, continuous=True)
    for label, (seconds, tokens, calls, *steps) in runs.items():
      expected = tokens if expected is None else expected
      if label.startswith("(a)"):
        prefills = sum(max(row_blocks[i:i + batch]) for i in range(0, len(rows), batch))
        floor = prefills * cost["prefill"] + (calls - prefills) * cost["window"]
        steps = calls
      else:
        steps = steps[0]
        prefills = blocks / batch   # of whole batches: a step of prefills alone has no window
        floor = prefills * cost["prefill"] + (steps - prefills) * cost["window"]
      print(f"| {label} | {batch} | {seconds:.2f} | {answer_tokens / seconds:.0f} | {calls} | "
            f"{calls / answer_tokens:.3f} | {steps} | {floor:.2f} | {floor / seconds:.2f} | "
            f"{np.mean((tokens == expected).all(axis=1)):.3f} |")
  if reference:
    for kind, label in (("fast_dual", "Fast-dLLM dual cache, threshold 0.9"),
                        ("llada", "ML-GSAI generate (uncached, no threshold)")):
      jobs = [job for key, job in reference["results"].items()
              if key.startswith(f"{name}/{kind}/")]
      seconds = sum(job["seconds"] for job in jobs)
      tokens = sum(len(job["tokens"][0]) - len(prompts[i]) for i, job in enumerate(jobs))
      calls = sum(job["nfe"] for job in jobs)
      print(f"| reference {label} ({len(jobs)} prompts) | 1 | {seconds:.2f} | "
            f"{tokens / seconds:.0f} | {calls} | {calls / tokens:.3f} | | | | |")
  print(f"\nModel alone (ms per call, batch {batches[-1]}): prefill + head "
        f"{1e3 * cost['prefill']:.1f}, dual window + head {1e3 * cost['window']:.1f}.")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  llada_decoding.add_reference_flags(parser)
  parser.add_argument("--no-references", action="store_true",
                      help="build the checkpoints here and leave out the reference rows")
  parser.add_argument("--prompts", type=int, default=256, help="N, the queue's prompts")
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--reference-prompts", type=int, default=8,
                      help="prompts the reference decoders run (one at a time)")
  args = parser.parse_args(argv)
  if not args.no_references:
    args = llada_decoding._checked_references(args)
  models = {name: MODELS[name] for name in args.models}
  prompts = {name: make_prompts(args.prompts, fields["vocab_size"])
             for name, (fields, _) in models.items()}
  print(f"CPU, {os.cpu_count()} cores, 1-minute load average {os.getloadavg()[0]:.1f}")
  with tempfile.TemporaryDirectory() as scratch:
    workdir = pathlib.Path(scratch)
    reference = None
    if args.no_references:
      for name, (fields, seed) in models.items():
        forward_in_scan.library_checkpoint(fields, seed, workdir / name)
    else:
      plan_path, out_path = workdir / "plan.json", workdir / "reference.json"
      plan_path.write_text(json.dumps(reference_plan(args, workdir, models, prompts)))
      subprocess.run([args.reference_python, str(llada_decoding.WORKER), "--plan",
                      str(plan_path), "--out", str(out_path)], check=True,
                     env=os.environ | {"TORCHDYNAMO_DISABLE": "1"})
      reference = json.loads(out_path.read_text())
      print(f"reference side: {reference['versions']}")
    for name in models:
      run_model(name, workdir / name, prompts[name], args.batches, reference)
  return 0


if __name__ == "__main__":
  sys.exit(main())
