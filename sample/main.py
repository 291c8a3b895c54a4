"""Sample text: `python sample/main.py [--sampler.FIELD=...] [--job.FIELD=...]`.

Defaults to the shipped Shakespeare model in `checkpoints/`, ReMDM-loop, 256 steps, top-p 0.9.

  python sample/main.py --job.num_samples=8 --sampler.strategy=cap --sampler.eta=0.04
  python sample/main.py --job.model=converted/ --job.prompt="The meaning of life"
"""

import sys

from remdm_jax.cli import sample_main

if __name__ == "__main__":
  sys.exit(sample_main())
