"""`as_denoiser(model)`: any model of the library as the sampler's `Denoiser`.

The DiT reads the diffusion time (through its schedule) and may be class-conditional; LLaDA
reads neither. Each family's own wrapper lives beside the model (`dit.as_denoiser`,
`llada.as_denoiser`); this function picks it, so code that samples does not need to know
which family it holds.
"""

from __future__ import annotations

from remdm_jax.denoiser import Denoiser
from remdm_jax.models import dit, llada


def as_denoiser(model, schedule=None, *, label: int | None = None) -> Denoiser:
  """The model as a `Denoiser`: `den(z [B, L] int32, t [B] float32) -> logits [B, L, V]`.

  Args:
    model: a `DiT` (see `dit.as_denoiser`: `schedule` maps t to its noise level, `label` is
      the class of a class-conditional model) or a `LLaDA` (`llada.as_denoiser`: it ignores
      t, so `schedule` and `label` do not apply).

  Raises:
    TypeError: not a model of the library. ValueError: `schedule` or `label` given for a
      LLaDA model, or what the family's wrapper refuses.
  """
  if isinstance(model, llada.LLaDA):
    given = [name for name, value in (("schedule", schedule), ("label", label))
             if value is not None]
    if given:
      raise ValueError(f"{' and '.join(given)} do not apply to a LLaDA model (it reads no "
                       "time and has no classes)")
    return llada.as_denoiser(model)
  if isinstance(model, dit.DiT):
    return dit.as_denoiser(model, schedule, label=label)
  raise TypeError(f"model must be a remdm_jax.models.DiT or LLaDA, got {type(model).__name__}")
