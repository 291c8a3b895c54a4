"""The PyTorch side of `llada_decoding.py`: builds the random LLaDA checkpoints and runs the
reference decoders on them, unchanged.

Run by `llada_decoding.py` under a Python with torch and transformers (CPU builds are
enough), with `TORCHDYNAMO_DISABLE=1` (the reference attention is wrapped in `torch.compile`;
eagerly it is the same `F.scaled_dot_product_attention` call):

  python benchmarks/llada_decoding_reference_worker.py --plan PLAN.json --out OUT.json

`PLAN.json` (written by `llada_decoding.py`) names the reference modeling code, the three
reference repositories (git directories, read with `git show HEAD:<path>`), the checkpoints to
build and the decoding jobs to run; `OUT.json` gets one result per job.

The decoders, extracted from the git mirrors at run time into a temporary folder and imported
from there:
  - ML-GSAI/LLaDA `generate.py`: `generate` ("llada").
  - NVlabs/Fast-dLLM `llada/generate.py`: `generate`, `generate_with_prefix_cache`,
    `generate_with_dual_cache` ("fast", "fast_prefix", "fast_dual"); its
    `from model.modeling_llada import LLaDAModelLM` resolves to the reference modeling
    package (the folder given as `reference_code` must be named `model`, as in Fast-dLLM).
  - guanghanwang/ReMDM-LLaDA `eval_llada.py`: `LLaDAEvalHarness.llada_remdm_sample` samples at
    temperature 1 only, so `remdm_greedy` below is a temperature-0 transcription of it ("remdm");
    the worker checks that the mirror's method is still the text it was written from.

Every reference call goes through `Recorder`, which passes the call on unchanged and keeps,
per model call, the positions the call saw and which of them were masks, so the step at which
each answer position was (last) decoded is known, and counts masked positions whose raw argmax
is the mask id.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llada_reference  # noqa: E402  (its BASE fields, random init and logits helper)

# sha256 of the source text of `llada_remdm_sample` in eval_llada.py (ReMDM-LLaDA 169c9b9,
# "release") that `remdm_greedy` transcribes.
REMDM_SOURCE_SHA256 = "c91d2f05f1e59f5430123eb75805788ecb84b468cf79d18f8146bd01cf7ec396"


# ---------------------------------------------------------------- checkpoints

def build_model(package, fields: dict, seed: int, logit_scale: float):
  """`llada_reference._reference_model` with `fields` over its `BASE` (fields that `BASE` also
  has, e.g. `n_layers` or `max_sequence_length`, replace its values), then the output
  projection times `logit_scale` (sharper predictions: some confidences above 0.9, so
  threshold decoding decodes several tokens per step) and its mask-id row set to zero: the
  mask id's logit is exactly 0, never the argmax in practice (the reference decoders take the
  argmax over the whole vocabulary, the library never decodes the mask id), and it stays in
  the softmax of both."""
  base = llada_reference.BASE
  llada_reference.BASE = {**base, **{k: v for k, v in fields.items() if k in base}}
  try:
    model = llada_reference._reference_model(
        package, {k: v for k, v in fields.items() if k not in base}, seed)
  finally:
    llada_reference.BASE = base
  mask_id = model.config.mask_token_id
  with torch.no_grad():
    head = model.model.transformer.ff_out.weight   # untied configs only
    head.mul_(logit_scale)
    head[mask_id] = 0.0
  return model


# ---------------------------------------------------------------- reference decoders

def _git_show(repo: str, path: str) -> str:
  return subprocess.run(["git", "--git-dir", repo, "show", f"HEAD:{path}"], check=True,
                        capture_output=True, text=True).stdout


def _git_head(repo: str) -> str:
  return subprocess.run(["git", "--git-dir", repo, "log", "-1", "--format=%h %s"], check=True,
                        capture_output=True, text=True).stdout.strip()


def _import_file(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _method_source(text: str, cls: str, method: str) -> str:
  tree = ast.parse(text)
  for node in tree.body:
    if isinstance(node, ast.ClassDef) and node.name == cls:
      for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == method:
          return ast.get_source_segment(text, item)
  raise SystemExit(f"eval_llada.py has no {cls}.{method}")


def load_decoders(plan: dict, scratch: pathlib.Path) -> tuple[dict, dict]:
  """{kind: function} and {repository: 'commit subject'} from the three mirrors."""
  llada_text = _git_show(plan["llada_repo"], "generate.py")
  fast_text = _git_show(plan["fast_dllm_repo"], "llada/generate.py")
  remdm_text = _git_show(plan["remdm_llada_repo"], "eval_llada.py")
  (scratch / "ref_llada_generate.py").write_text(llada_text)
  (scratch / "ref_fast_dllm_generate.py").write_text(fast_text)
  llada = _import_file("ref_llada_generate", scratch / "ref_llada_generate.py")
  fast = _import_file("ref_fast_dllm_generate", scratch / "ref_fast_dllm_generate.py")
  remdm_source = _method_source(remdm_text, "LLaDAEvalHarness", "llada_remdm_sample")
  digest = hashlib.sha256(remdm_source.encode()).hexdigest()
  versions = {
      "ML-GSAI/LLaDA": _git_head(plan["llada_repo"]),
      "NVlabs/Fast-dLLM": _git_head(plan["fast_dllm_repo"]),
      "guanghanwang/ReMDM-LLaDA": _git_head(plan["remdm_llada_repo"]),
      "llada_remdm_sample sha256": digest[:16],
      "llada_remdm_sample as transcribed": digest == REMDM_SOURCE_SHA256,
  }
  decoders = {"llada": llada.generate, "fast": fast.generate,
              "fast_prefix": fast.generate_with_prefix_cache,
              "fast_dual": fast.generate_with_dual_cache, "remdm": remdm_greedy}
  return decoders, versions


@torch.no_grad()
def remdm_greedy(model, prompt, *, mask_id, gen_length, block_length, steps, remdm_number,
                 eos_id=None):
  """`LLaDAEvalHarness.llada_remdm_sample` of guanghanwang/ReMDM-LLaDA `eval_llada.py` at
  temperature 0, for one prompt `[1, P]` int64; returns `xt [1, P + gen_length]`.

  Transcribed line for line; the changes: the harness's attributes are arguments
  (`mask_length` = `gen_length`, `block_size` = `block_length`, `sampling_steps` = `steps`, the
  total over all blocks); `_sample_categorical(p)` (a Gumbel draw from the float64 softmax)
  is its argmax; the early return after a block that holds the EOS id (anywhere in `xt`,
  the prompt included) happens only when `eos_id` is given.

  Per block: `2 * steps_per_block` iterations; iterations [int(block_length / 8 * 7),
  that + steps_per_block) are the ReMDM window: first remask the `remdm_number` decoded
  positions of the block with the lowest confidence at their decoding (`conf_cache`; the
  other positions hold inf), then decode `remdm_number`; the other iterations decode
  `gen_length / steps` tokens each.
  """
  xt = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long).to(model.device)
  xt[:, :prompt.shape[1]] = prompt.clone()

  prompt_index = (xt != mask_id)
  prompt_len = prompt_index.sum(1).item()

  assert gen_length % block_length == 0
  num_blocks = gen_length // block_length

  assert steps % num_blocks == 0
  steps_per_block = steps // num_blocks

  assert gen_length % steps == 0

  for num_block in range(num_blocks):
    conf_cache = torch.ones_like(xt, dtype=torch.float64) * np.inf
    remask_thres = int(block_length / 8 * 7)
    for i in range(2 * steps_per_block):
      if i >= remask_thres and i < remask_thres + steps_per_block:
        remask_index = torch.zeros_like(xt, dtype=torch.bool, device=xt.device)
        _, mask_indices = torch.topk(conf_cache, k=remdm_number, largest=False, dim=1)
        remask_index[0, mask_indices] = True
        conf_cache[remask_index] = np.inf
        xt[remask_index] = mask_id
      mask_index = (xt == mask_id)
      logits = model(xt).logits
      p = F.softmax(logits.to(torch.float64), dim=-1)
      x0 = p.argmax(dim=-1)   # the reference: _sample_categorical(p)
      x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)  # b, l

      x0_p[:, prompt_len + (num_block + 1) * block_length:] = -np.inf
      x0 = torch.where(mask_index, x0, xt)
      confidence = torch.where(mask_index, x0_p, -np.inf)

      if i >= remask_thres and i < remask_thres + steps_per_block:
        transfer_length = remdm_number
      else:
        transfer_length = int(gen_length / steps)

      transfer_index = torch.zeros_like(x0, dtype=torch.bool, device=x0.device)
      for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=transfer_length)
        transfer_index[j, select_index] = True
      xt[transfer_index] = x0[transfer_index]
      conf_cache[transfer_index] = confidence[transfer_index]
    if eos_id is not None and torch.sum(xt == eos_id) > 0:
      return xt

  return xt


class Recorder:
  """The model as the reference decoders call it, passing every call on unchanged.

  Per call it keeps the first row's input and its offset in the sequence (the cached
  decoders feed a suffix, or the current block with `replace_position`), and counts masked
  positions of that row whose raw argmax is the mask id."""

  def __init__(self, model, mask_id: int, length: int):
    self.model, self.mask_id, self.length = model, mask_id, length
    self.calls: list[tuple[int, np.ndarray]] = []
    self.mask_argmax = 0

  @property
  def device(self):
    return self.model.device

  def __call__(self, x, **kwargs):
    out = self.model(x, **kwargs)
    position = kwargs.get("replace_position")
    offset = (int(position[0].nonzero()[0, 0]) if position is not None
              else self.length - x.shape[1])
    row = x[0].numpy().copy()
    self.calls.append((offset, row))
    masked = torch.from_numpy(row == self.mask_id)
    self.mask_argmax += int((out.logits[0].argmax(-1)[masked] == self.mask_id).sum())
    return out

  def decode_steps(self) -> list[int]:
    """Per position of the sequence: the last call (0-based) that saw it masked; -1: never."""
    last = np.full(self.length, -1)
    for call, (offset, row) in enumerate(self.calls):
      where = np.nonzero(row == self.mask_id)[0] + offset
      last[where] = call
    return last.tolist()


def run_job(decoders, model, job: dict, mask_id: int) -> dict:
  """One reference call on `job["prompts"]` (`[B, P]`, B > 1 only for "llada")."""
  prompt = torch.tensor(job["prompts"], dtype=torch.long)
  kind, args = job["reference"], dict(job["args"])
  recorder = Recorder(model, mask_id, prompt.shape[1] + args["gen_length"])
  start = time.perf_counter()
  if kind == "llada":
    cfg = args.pop("cfg_scale", 0.0)
    # generate() reads `attention_mask_` only when it is given: with cfg it must be.
    out = decoders[kind](recorder, prompt, attention_mask=torch.ones_like(prompt) if cfg else None,
                         temperature=0.0, cfg_scale=cfg, remasking="low_confidence",
                         mask_id=mask_id, **args)
    nfe = len(recorder.calls)
  elif kind == "remdm":
    out = decoders[kind](recorder, prompt, mask_id=mask_id, **args)
    nfe = len(recorder.calls)
  else:
    threshold = args.pop("threshold", None)
    out, nfe = decoders[kind](recorder, prompt, temperature=0.0, remasking="low_confidence",
                              mask_id=mask_id, threshold=threshold, **args)
  seconds = time.perf_counter() - start
  out = out.numpy()
  return {"tokens": out.tolist(), "nfe": int(nfe), "seconds": seconds,
          "decode_steps": recorder.decode_steps(), "mask_argmax": recorder.mask_argmax,
          "mask_decoded": int((out[:, prompt.shape[1]:] == mask_id).sum())}


def time_job(decoders, model, job: dict, mask_id: int) -> dict:
  """`run_job` once to warm up, then `job["repeats"]` timed runs (recording stays on: its
  cost, a copy of one row per call, is small beside a forward)."""
  first = run_job(decoders, model, job, mask_id)
  times = [run_job(decoders, model, job, mask_id)["seconds"] for _ in range(job["repeats"])]
  return {**first, "seconds": statistics.median(times), "all_seconds": times,
          "load": os.getloadavg()[0]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--plan", type=pathlib.Path, required=True)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args(argv)
  plan = json.loads(args.plan.read_text())
  torch.set_num_threads(plan["threads"])
  code = pathlib.Path(plan["reference_code"]).resolve()
  sys.path.insert(0, str(code.parent))
  package = importlib.import_module(code.name)
  import transformers
  with tempfile.TemporaryDirectory() as scratch:
    decoders, versions = load_decoders(plan, pathlib.Path(scratch))
    versions |= {"torch": torch.__version__, "transformers": transformers.__version__,
                 "torch threads": torch.get_num_threads()}
    results, checkpoints = {}, {}
    for name, spec in plan["checkpoints"].items():
      model = build_model(package, spec["fields"], spec["seed"], plan["logit_scale"])
      model.save_pretrained(spec["folder"], safe_serialization=True)
      mask_id = model.config.mask_token_id
      tokens = np.array(spec["probe_tokens"])
      logits = llada_reference._reference_logits(model, tokens)
      np.save(pathlib.Path(spec["folder"]) / "probe_logits.npy", logits)
      checkpoints[name] = {"mask_id": mask_id, "eos_id": model.config.eos_token_id}
      for job in plan["jobs"]:
        if job["checkpoint"] != name:
          continue
        run = time_job if job.get("repeats") else run_job
        results[job["id"]] = run(decoders, model, job, mask_id)
        if plan.get("verbose"):
          print(f"  reference {job['id']}: {results[job['id']]['seconds']:.2f} s", flush=True)
  args.out.write_text(json.dumps({"versions": versions, "checkpoints": checkpoints,
                                  "results": results}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
