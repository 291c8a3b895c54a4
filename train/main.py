"""Train a masked diffusion (or autoregressive) model: `python train/main.py --workdir=DIR`.

Flags are `--model.FIELD=`, `--train.FIELD=`, `--data.FIELD=` (see `remdm_jax.cli`), e.g.

  python train/main.py --workdir=runs/shakespeare --train.steps=2000 --data.seq_len=256

Rerunning the same command resumes from the last checkpoint in the workdir.
"""

import sys

from remdm_jax.cli import train_main

if __name__ == "__main__":
  sys.exit(train_main())
