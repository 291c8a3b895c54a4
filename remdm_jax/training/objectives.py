"""The training objectives: one frozen dataclass each, registered once by name.

An objective owns its options (validated on construction, so an option it does not have
cannot be given to it) and its loss of one batch, built from `remdm_jax.training.losses`:

- `MdlmObjective()`: MDLM's continuous-time NELBO (Sahoo et al. 2024, arXiv 2406.07524,
  eq. 10);
- `MdlmDiscreteObjective(discrete_steps)`: MDLM's NELBO in T discrete steps;
- `RemdmObjective(discrete_steps, sigma_rule, eta)`: the ReMDM NELBO (Wang et al. 2025,
  arXiv 2503.00307, eq. 9);
- `ArObjective()`: the autoregressive next-token NLL of a causal model;
- `ClassifierObjective()`: the cross-entropy of a classifier of noisy sequences p(y | z_t);
- `SftObjective(weighting)`: supervised fine-tuning on prompt-answer rows (LLaDA's, or Ye et
  al.'s linear time weighting).

On prompt-answer rows (`{"tokens", "prompt_lengths"}`, `remdm_jax.data.batches`) the NELBOs
are those of the answer given the prompt: the prompt is never masked and never scored. A
model without a time input (a LLaDA) is trained through its family's denoiser.

`make_objective("remdm", discrete_steps=4096, eta=0.5)` is the flat keyword form used by
command lines. `held_out_loss` is the one validation measure, used by the training loop's
periodic evaluation and by the scripts that compare trained models. The optimiser and the
loop live in `remdm_jax.training.loop`, which holds an objective in its `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from remdm_jax import families
from remdm_jax.data import batches
from remdm_jax.training import losses
from remdm_jax.models.classifier import NoisyClassifier
from remdm_jax.models.dit import DiT
from remdm_jax.registry import Registry, flat_options
from remdm_jax.schedules import LogLinear, total_noise
from remdm_jax.validation import check_choice, check_fields, check_int, check_range, option

REGISTRY = Registry("objective", "remdm")
OBJECTIVES = REGISTRY.classes       # name -> objective class
register = REGISTRY.register        # the class decorator
SIGMA_RULES = ("cap", "rescale")


def make_objective(objective: str = "mdlm", **options) -> Objective:
  """An objective from flat keywords: `make_objective("remdm", discrete_steps=4096, eta=0.5)`
  is `RemdmObjective(discrete_steps=4096, eta=0.5)`.

  Raises:
    ValueError: an unknown objective, an option it does not have, or a value out of range.
  """
  return REGISTRY.build(objective, **options)


def _training_labels(model: DiT, labels, key: jax.Array, label_dropout: float, train: bool):
  """Class labels as the model sees them: in training, each is replaced by the null class
  (`num_classes`) with probability `label_dropout`, so one model learns the conditional
  and the unconditional `x_theta` (classifier-free guidance)."""
  if labels is None:
    return None
  if not model.cfg.num_classes:
    raise ValueError("labelled batches need a class-conditional model (model num_classes > 0)")
  if not train:
    return labels
  drop = jax.random.uniform(jax.random.fold_in(key, 7), labels.shape) < label_dropout
  return jnp.where(drop, model.cfg.num_classes, labels)


@dataclasses.dataclass(frozen=True)
class Objective:
  """Base class: subclass it, give it a `name`, implement `_loss`, decorate with `@register`."""

  name: ClassVar[str]
  causal: ClassVar[bool] = False         # the DiT it trains attends left to right
  model_class: ClassVar[type | None] = None   # what `build_model` builds (None: the model
                                              # of the config's family)
  CHOICE: ClassVar = ("objective", REGISTRY)   # its name in the flat form

  def __post_init__(self):
    check_fields(self)

  def options(self) -> dict:
    """The flat form `{"objective": name, **fields}` (JSON-able; `make_objective(**it)`
    rebuilds the objective)."""
    return flat_options(self)

  def check_model(self, model_cfg) -> None:
    """Raises a `ValueError` unless the model fits the objective (causal or not)."""
    causal = getattr(model_cfg, "causal", False)
    if causal != self.causal:
      raise ValueError(f"objective {self.name!r} needs model causal={self.causal}, got "
                       f"causal={causal}")

  def build_model(self, model_cfg, rngs: nnx.Rngs):
    """A new model for `model_cfg`: `model_class` when set, else the model of the family
    whose config type `model_cfg` is (`remdm_jax.families.for_config`)."""
    if self.model_class is not None:
      return self.model_class(model_cfg, rngs=rngs)
    return families.for_config(model_cfg).build(model_cfg, rngs)

  def loss(self, model: DiT | NoisyClassifier, batch, key: jax.Array, *, mask_id: int,
           train: bool) -> jax.Array:
    """The objective's loss of one batch (`[B, L] int32`, or `{"tokens", "labels"}` for a
    class-conditional model or a classifier), in nats per token (per example for a
    classifier); `[] float32`.

    `train=True` applies dropout and label dropout (from the key); the noise (times and
    masks) always comes from `key`, so a fixed key gives a fixed value.
    """
    rngs = nnx.Rngs(dropout=jax.random.split(key, 3)[2]) if train else None
    tokens, labels = batches.tokens_and_labels(batch)
    return self._loss(model, tokens, labels, key, mask_id, rngs, train, prompt_positions(batch))

  def _loss(self, model, tokens, labels, key, mask_id, rngs, train, prompt) -> jax.Array:
    raise NotImplementedError(f"objective {self.name!r} defines no loss")


def prompt_positions(batch) -> jax.Array | None:
  """`[B, L] bool`, True within each row's prompt, for prompt-answer rows; else None."""
  if not isinstance(batch, dict) or "prompt_lengths" not in batch:
    return None
  length = batch["tokens"].shape[1]
  return jnp.arange(length)[None, :] < jnp.asarray(batch["prompt_lengths"])[:, None]


def _refuse_prompts(name: str, prompt) -> None:
  if prompt is not None:
    raise ValueError(f"objective {name!r} does not train on prompt-answer rows; use "
                     "llada_sft, mdlm, mdlm_discrete or remdm")


def _denoiser(model, schedule, labels, rngs):
  """`(z, t) -> logits` of the model being trained: a DiT reads the time (as total noise),
  its labels and the dropout key; any other family's model through its denoiser."""
  if isinstance(model, DiT):
    return lambda z, t: model(z, total_noise(t, schedule), labels=labels, rngs=rngs)
  if labels is not None:
    raise ValueError(f"labelled rows need a class-conditional DiT, got a "
                     f"{type(model).__name__}")
  return families.for_model(model).as_denoiser(model)


@dataclasses.dataclass(frozen=True)
class _Diffusion(Objective):
  """The masked-diffusion NELBOs: a DiT denoiser under the log-linear schedule, optionally
  class-conditional. Subclasses choose the bound (`_nelbo`)."""

  _: dataclasses.KW_ONLY
  eps: float = option(1e-3, "log-linear schedule: alpha(1) = eps, t drawn from [eps, 1]")
  label_dropout: float = option(0.1, "class-conditional model: chance a label becomes the null "
                                     "class")

  def __post_init__(self):
    super().__post_init__()
    check_range("eps", self.eps, 0.0, 1.0, low_open=True, high_open=True)
    check_range("label_dropout", self.label_dropout, 0.0, 1.0, high_open=True)

  def _loss(self, model, tokens, labels, key, mask_id, rngs, train, prompt):
    if isinstance(model, DiT):
      labels = _training_labels(model, labels, key, self.label_dropout, train)
    denoiser = _denoiser(model, LogLinear(eps=self.eps), labels, rngs)
    return self._nelbo(denoiser, tokens, key, mask_id, prompt)

  def _nelbo(self, denoiser, tokens, key, mask_id, prompt) -> jax.Array:
    raise NotImplementedError(f"objective {self.name!r} defines no bound")


@register
@dataclasses.dataclass(frozen=True)
class MdlmObjective(_Diffusion):
  """MDLM's continuous-time NELBO (eq. 10 of Sahoo et al.)."""

  name: ClassVar[str] = "mdlm"

  def _nelbo(self, denoiser, tokens, key, mask_id, prompt):
    return losses.mdlm_loss(denoiser, tokens, key, mask_id=mask_id, eps=self.eps, prompt=prompt)


@register
@dataclasses.dataclass(frozen=True)
class MdlmDiscreteObjective(_Diffusion):
  """MDLM's NELBO in `discrete_steps` steps (ReMDM eq. 9 with sigma = 0)."""

  name: ClassVar[str] = "mdlm_discrete"
  discrete_steps: int = option(4_096, "T of the discrete NELBO (the ReMDM ablation: 4,096, "
                                      "8,192)")

  def __post_init__(self):
    super().__post_init__()
    check_range("discrete_steps", self.discrete_steps, 1, context=f" for objective {self.name!r}")

  def _nelbo(self, denoiser, tokens, key, mask_id, prompt):
    return losses.mdlm_discrete_loss(denoiser, tokens, key, num_steps=self.discrete_steps,
                                     mask_id=mask_id, eps=self.eps, prompt=prompt)


@register
@dataclasses.dataclass(frozen=True)
class RemdmObjective(_Diffusion):
  """ReMDM's NELBO (eq. 9) in `discrete_steps` steps, sigma from `sigma_rule` and `eta`."""

  name: ClassVar[str] = "remdm"
  discrete_steps: int = option(4_096, "T of the discrete NELBO (eq. 9 is discrete)")
  sigma_rule: str = option("cap", "cap: min(eta, sigma_max) (the paper's ablation); rescale: "
                                  "eta sigma_max")
  eta: float = option(0.0, "eta_cap (>= 0) or eta_rescale (in [0, 1]); 0 is MDLM's bound")

  def __post_init__(self):
    super().__post_init__()
    check_range("discrete_steps", self.discrete_steps, 1, context=f" for objective {self.name!r}")
    check_choice("sigma_rule", self.sigma_rule, SIGMA_RULES)
    check_range("eta", self.eta, 0.0, 1.0 if self.sigma_rule == "rescale" else None,
                context=f" for sigma_rule {self.sigma_rule!r}")

  def _nelbo(self, denoiser, tokens, key, mask_id, prompt):
    return losses.remdm_loss(denoiser, tokens, key, num_steps=self.discrete_steps,
                             sigma_rule=self.sigma_rule, eta=self.eta, mask_id=mask_id,
                             eps=self.eps, prompt=prompt)


@register
@dataclasses.dataclass(frozen=True)
class ArObjective(Objective):
  """Next-token cross-entropy of a causal DiT (unconditional: unlabelled rows)."""

  name: ClassVar[str] = "ar"
  causal: ClassVar[bool] = True

  def _loss(self, model, tokens, labels, key, mask_id, rngs, train, prompt):
    _refuse_prompts(self.name, prompt)
    if labels is not None:
      raise ValueError("objective 'ar' trains an unconditional model; got labelled rows")
    return losses.ar_loss(
        lambda x: model(x, jnp.zeros((x.shape[0],), jnp.float32), rngs=rngs), tokens)


@register
@dataclasses.dataclass(frozen=True)
class ClassifierObjective(Objective):
  """Cross-entropy of a `NoisyClassifier` of p(y | z_t) on labelled rows, noised as in MDLM."""

  name: ClassVar[str] = "classifier"
  model_class: ClassVar[type] = NoisyClassifier
  eps: float = option(1e-3, "log-linear schedule: alpha(1) = eps, t drawn from [eps, 1]")

  def __post_init__(self):
    super().__post_init__()
    check_range("eps", self.eps, 0.0, 1.0, low_open=True, high_open=True)

  def _loss(self, model, tokens, labels, key, mask_id, rngs, train, prompt):
    _refuse_prompts(self.name, prompt)
    if labels is None:
      raise ValueError("objective 'classifier' needs labelled rows (--data.label=qed|rings)")
    schedule = LogLinear(eps=self.eps)
    return losses.classifier_loss(
        lambda x, t: model(x, total_noise(t, schedule), rngs=rngs), tokens, labels, key,
        mask_id=mask_id, vocab_size=model.cfg.vocab_size, eps=self.eps)


@register
@dataclasses.dataclass(frozen=True)
class SftObjective(Objective):
  """Supervised fine-tuning on prompt-answer rows (`losses.sft_loss`): LLaDA's objective
  (`weighting="inverse"`) or Ye et al.'s linear time weighting."""

  name: ClassVar[str] = "llada_sft"
  eps: float = option(1e-3, "inverse weighting: mask ratio (1 - eps) t + eps")
  weighting: str = option("inverse", "inverse: LLaDA's 1/t; linear: Ye et al.'s T - k at mask "
                                     "ratio (k + 1) / T")
  time_steps: int = option(20, "T of the linear weighting")

  def __post_init__(self):
    super().__post_init__()
    check_range("eps", self.eps, 0.0, 1.0, low_open=True, high_open=True)
    check_choice("weighting", self.weighting, losses.SFT_WEIGHTINGS)
    check_range("time_steps", self.time_steps, 1)

  def _loss(self, model, tokens, labels, key, mask_id, rngs, train, prompt):
    if prompt is None or labels is not None:
      raise ValueError(f"objective {self.name!r} trains on prompt-answer rows ({{'tokens', "
                       "'prompt_lengths'}})")
    denoiser = _denoiser(model, LogLinear(eps=self.eps), None, rngs)
    return losses.sft_loss(denoiser, tokens, prompt, key, mask_id=mask_id, eps=self.eps,
                           weighting=self.weighting, time_steps=self.time_steps)


def model_loss(model: DiT | NoisyClassifier, objective: Objective, mask_id: int) -> Callable:
  """`jit((batch [B, L] int32, key) -> [] float32)`: a model's `objective` loss without
  dropout."""
  return jax.jit(lambda batch, key: objective.loss(model, batch, key, mask_id=mask_id,
                                                   train=False))


def held_out_loss(loss: Callable, rows: np.ndarray, batch_size: int, *, seed: int,
                  max_batches: int | None = None, draws: int = 1) -> float:
  """Mean of `loss(batch, key)` over the full batches of `rows` (at most `max_batches`),
  with `draws` noise draws per batch; batch j of draw d uses `fold_in(key(seed + d), j)`, so
  every model evaluated with the same seed sees the same noise.

  Raises:
    ValueError: `rows` holds no full batch.
  """
  check_int("batch_size", batch_size, 1)
  count = batches.num_rows(rows) // batch_size
  if max_batches is not None:
    count = min(count, max_batches)
  if count < 1:
    raise ValueError(f"held-out rows: {batches.num_rows(rows)} rows hold no full batch of "
                     f"{batch_size}")
  values = [float(loss(batches.take_rows(rows, slice(j * batch_size, (j + 1) * batch_size)),
                       jax.random.fold_in(jax.random.key(seed + draw), j)))
            for draw in range(draws) for j in range(count)]
  return float(np.mean(values))
