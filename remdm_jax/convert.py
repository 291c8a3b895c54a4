"""The retired path of the weight converter (it moved to `remdm_jax.weights.convert`), kept so
that `python -m remdm_jax.convert SRC DST`, which used to convert, says which command to run
instead of failing on a missing module: `remdm-convert SRC DST`. Nothing imports it."""

import sys

from remdm_jax.errors import not_a_command

if __name__ == "__main__":
  sys.exit(not_a_command("remdm_jax.convert", "remdm-convert SRC DST (the converter moved to "
                         "remdm_jax.weights.convert)"))
