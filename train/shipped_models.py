"""Train the models shipped in `checkpoints/`: a byte-level MDLM DiT on Shakespeare's plays and
a byte-level causal model on the same data (the offline Gen PPL / MAUVE evaluator).

  python train/shipped_models.py --workdir runs/shipped [--mdlm-steps 6000] [--ar-steps 3000]
      [--install checkpoints]

Each run resumes if restarted, also with a different step count (stop a long run with
SIGTERM, then rerun with the saved step as `--mdlm-steps` to export it); `--ar-steps 0` skips
the evaluator. With `--install`, the EMA models, their training logs and final
validation metrics are copied to `checkpoints/shakespeare-mdlm` and `checkpoints/shakespeare-ar`.
"""

import argparse
import dataclasses
import json
import pathlib
import shutil
import time

import numpy as np

from remdm_jax.data import datasets as data
from remdm_jax.training import objectives
from remdm_jax.training import loop as training
from remdm_jax.weights.checkpoint import load_model
from remdm_jax.models import DiTConfig
from remdm_jax.text.tokenizers import ByteTokenizer

SEQ_LEN = 128


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--mdlm-steps", type=int, default=6000)
  parser.add_argument("--ar-steps", type=int, default=3000)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=192)
  parser.add_argument("--install", default="", help="checkpoints folder to copy the models to")
  args = parser.parse_args()
  workdir, tok = pathlib.Path(args.workdir), ByteTokenizer()
  data_cfg = data.DataConfig(dataset="shakespeare_plays", data_dir=str(workdir / "tfds"),
                             source_dir=str(workdir / "source"), seq_len=SEQ_LEN)
  train_rows, valid_rows = data_cfg.load_rows(tok)
  model = DiTConfig(vocab_size=tok.vocab_size, hidden=args.hidden, heads=4, blocks=4,
                    cond_dim=64, max_length=SEQ_LEN, dropout=0.0)
  base = training.TrainConfig(batch_size=args.batch_size, warmup_steps=500,
                              learning_rate=1e-3, ema_decay=0.999, eval_every=1000,
                              eval_batches=8, save_every=500, log_every=50)
  runs = {"shakespeare-mdlm": (model, dataclasses.replace(base, steps=args.mdlm_steps))}
  if args.ar_steps:
    runs["shakespeare-ar"] = (dataclasses.replace(model, causal=True),
                              dataclasses.replace(base, objective=objectives.ArObjective(),
                                                  steps=args.ar_steps))
  for name, (model_cfg, cfg) in runs.items():
    run_dir, tic = workdir / name, time.time()
    state = training.train(model_cfg, cfg, data.BatchStream(train_rows, cfg.batch_size, 0),
                           valid_rows, tok.mask_id, run_dir, tokenizer="bytes")
    if int(state["step"]) < cfg.steps:
      print(f"stopped at step {int(state['step'])} of {name}; rerun to resume")
      return
    loss = objectives.held_out_loss(
        objectives.model_loss(load_model(run_dir / "model"), cfg.objective, tok.mask_id),
        valid_rows, args.batch_size, seed=10_000, draws=4)
    final = {"validation_nats_per_byte": loss, "validation_ppl" + (
        "" if cfg.objective.causal else "_bound"): float(np.exp(loss)),
             "validation_rows": int(len(valid_rows) // args.batch_size * args.batch_size),
             "steps": cfg.steps, "seconds_this_run": round(time.time() - tic)}
    (run_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    print(name, final, flush=True)
    if args.install:
      target = pathlib.Path(args.install) / name
      if target.exists():
        shutil.rmtree(target)
      shutil.copytree(run_dir / "model", target)
      for extra in ("metrics.jsonl", "final.json", "config.json"):
        shutil.copy(run_dir / extra, target / ("training_" + extra))


if __name__ == "__main__":
  main()
