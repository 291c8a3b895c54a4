"""`as_denoiser(model)`: any model of a registered family as the sampler's `Denoiser`.

Each family's own wrapper lives beside its model (`dit.as_denoiser`, `llada.as_denoiser`);
the family registry (`remdm_jax.families`) picks it by the model's class, so code that samples
does not need to know which family it holds.
"""

from __future__ import annotations

from remdm_jax import families
from remdm_jax.denoiser import Denoiser


def as_denoiser(model, schedule=None, *, label: int | None = None) -> Denoiser:
  """The model as a `Denoiser`: `den(z [B, L] int32, t [B] float32) -> logits [B, L, V]`.

  Args:
    model: a model of a registered family: a `DiT` (see `dit.as_denoiser`: `schedule` maps t
      to its noise level, `label` is the class of a class-conditional model), a `LLaDA`
      (`llada.as_denoiser`: it ignores t, so `schedule` and `label` do not apply), or one of
      a family registered by the caller.

  Raises:
    TypeError: not a model of a registered family (naming them), or a classifier.
      ValueError: `schedule` or `label` given for a LLaDA model, or what the family's wrapper
      refuses.
  """
  return families.for_model(model).as_denoiser(model, schedule, label=label)
