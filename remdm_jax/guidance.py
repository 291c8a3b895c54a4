"""Denoiser combinators for guidance (Schiff et al. 2024, arXiv 2412.10193; ReMDM section 5.3).

- Classifier-free (D-CFG): `log x_gamma = gamma log x_theta(. | y) + (1 - gamma) log
  x_theta(. | null)`, renormalised per position.
- Classifier-based (D-CBG): for a masked position `l` and candidate token `v`,
  `log x_gamma(v)_l = log x_theta(v)_l + gamma log p_phi(y | z with z_l = v, t)`,
  renormalised over `v`; either exactly (every single-token change, `classifier_guidance(...,
  form="exact")`) or to first order with one gradient (`form="gradient"`):
  `log p(y | z_l = v) ~ log p(y | z) + g_l[v] - g_l[z_l]`, `g = d log p(y | x) / d x` at the
  one-hot `x` of `z`.

Both results are `Denoiser`s returning normalised log-probabilities (their parameters: the
inner denoisers' and classifier's, the strength and the target, all pytree leaves), so they
plug into `remdm_jax.sample` and `make_sampler` with every strategy, prompt and sharding, and a
new gamma reuses a compiled sampler. `NoGuidance`, `Cfg` and `Cbg` name a choice of guidance
and its options, as the strategies do for the sampler; the sampling jobs, the command line and
the scripts build their denoisers through them. The guidance paper applies the
classifier reweighting to the posterior of a position, including its chance of staying masked
(that entry gets `log p(y | z_t)`), which also changes how often positions unmask. Here it
reweights `x_theta` only: the strategy keeps deciding when positions unmask and remask (that
is what makes ReMDM's remasking schedules apply unchanged), and the classifier decides which
token a position takes. The two agree on the token drawn given that a position unmasks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.denoiser import Classifier, Denoiser, ensure_classifier, ensure_denoiser
from remdm_jax.registry import Registry, with_choice_options
from remdm_jax.sampling.rounds import in_rounds
from remdm_jax.validation import (check_choice, check_fields, check_int, check_range,
                                  check_scalar, option)

GUIDANCE_FORMS = ("gradient", "exact")
DEFAULT_FORM = "gradient"   # one call and one gradient per step; exact costs V calls per
                            # masked position


def _agreed(field: str, *denoisers: Denoiser) -> int | None:
  """What the denoisers declare as `field` ("vocab_size" or "mask_id"; they must agree), or
  None."""
  values = {getattr(d, field) for d in denoisers if getattr(d, field) is not None}
  if len(values) > 1:
    raise ValueError(f"the denoisers' {field} values differ: {sorted(values)}")
  return values.pop() if values else None


@dataclasses.dataclass(frozen=True)
class _CfgCall:
  """D-CFG of two denoiser functions: `(params, z, t) -> [B, L, V] f32` log-probabilities,
  params `(conditional params, unconditional params, gamma)`."""

  conditional: Callable
  unconditional: Callable

  def __call__(self, params, z: jax.Array, t: jax.Array) -> jax.Array:
    cond_params, uncond_params, gamma = params
    cond, uncond = self.conditional(cond_params, z, t), self.unconditional(uncond_params, z, t)
    if cond.shape != uncond.shape:
      raise ValueError(f"classifier-free guidance needs logits of one shape (one vocabulary) "
                       f"from both denoisers, got conditional {list(cond.shape)} and "
                       f"unconditional {list(uncond.shape)}")
    log_cond = jax.nn.log_softmax(cond.astype(jnp.float32), axis=-1)          # [B, L, V]
    log_uncond = jax.nn.log_softmax(uncond.astype(jnp.float32), axis=-1)
    mixed = gamma * log_cond + (1.0 - gamma) * log_uncond
    impossible = jnp.isneginf(log_cond) | jnp.isneginf(log_uncond)   # else -inf + inf = NaN
    return jax.nn.log_softmax(jnp.where(impossible, -jnp.inf, mixed), axis=-1)


def classifier_free_guidance(conditional, unconditional, gamma) -> Denoiser:
  """Mixes two denoisers' log-probabilities with weight `gamma` (1: the conditional one). An
  id that either denoiser rules out (a `-inf` logit, e.g. the class tokens of an image model)
  stays ruled out, at every gamma (so at gamma 1 too, an id only the unconditional rules out).

  Args:
    conditional: a `Denoiser` (or function `(z [B, L] int32, t [B] float32) -> logits
      [B, L, V]`) conditioned on y.
    unconditional: the same, without y.
    gamma: guidance strength (>= 0 in practice); a finite number, or traced data.

  Returns:
    A `Denoiser` returning `[B, L, V] float32` guided log-probabilities (normalised over V);
    its params are `(conditional params, unconditional params, gamma)`; it reads t when
    either input does.

  Raises:
    TypeError: a denoiser is neither a Denoiser nor a function.
    ValueError: a concrete gamma is not a finite number, or the vocabularies (or declared
      mask ids) differ.
  """
  conditional, unconditional = ensure_denoiser(conditional), ensure_denoiser(unconditional)
  check_scalar("gamma", gamma)
  params = (conditional.params, unconditional.params, jnp.asarray(gamma, jnp.float32))
  return Denoiser(_CfgCall(conditional.aligned_apply, unconditional.aligned_apply), params,
                  reads_t=conditional.reads_t or unconditional.reads_t,
                  vocab_size=_agreed("vocab_size", conditional, unconditional),
                  mask_id=_agreed("mask_id", conditional, unconditional))


def _target_log_prob(classifier: Classifier, onehot: jax.Array, t: jax.Array,
                     target: jax.Array) -> jax.Array:
  """`log p(y = target | x, t)`, `[N]` float32, for `onehot [N, L, V]`, `t [N]`, `target [N]`.

  Raises (while tracing):
    ValueError: the classifier's output is not `[N, C]` floating logits with `C >= 2` (one
      class gives a constant log-probability: guidance would do nothing).
  """
  logits = classifier(onehot, t)                                      # [N, C]
  shape = getattr(logits, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != onehot.shape[0] or shape[1] < 2:
    raise ValueError(f"classifier must return logits [B, C] with C >= 2 classes for "
                     f"{onehot.shape[0]} inputs, got {list(shape) if shape else logits!r:.60}")
  if classifier.num_classes is not None and shape[1] != classifier.num_classes:
    raise ValueError(f"classifier declares num_classes {classifier.num_classes} but returns "
                     f"logits {list(shape)}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"classifier must return floating logits (integers have no gradient), "
                     f"got dtype {logits.dtype}")
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, target[:, None], axis=-1)[:, 0]


def exact_classifier_scores(classifier: Classifier, z: jax.Array, t: jax.Array,
                            target: jax.Array, vocab_size: int,
                            selected: jax.Array | None = None) -> jax.Array:
  """`log p(y = target | z with z_l = v, t)` for every token `v` at the `selected [B, L] bool`
  positions (default: all); `[B, L, V] float32`, zero at positions not selected.

  One position per example per round (`remdm_jax.sampling.rounds.in_rounds`), each round one
  classifier call on `B * V` sequences; as many rounds as the example with the most selected
  positions has, so scoring only the masked positions costs in proportion to them. Meant for
  small vocabularies such as SMILES characters."""
  classifier = ensure_classifier(classifier)
  batch, length = z.shape
  selected = jnp.ones(z.shape, bool) if selected is None else selected
  candidates = jnp.arange(vocab_size, dtype=z.dtype)[None, :, None]     # [1, V, 1]
  t_rep = jnp.repeat(t, vocab_size)                                    # [B * V]
  target_rep = jnp.repeat(target, vocab_size)

  def at_positions(positions):                                         # [B, 1] int32
    changing = jnp.arange(length)[None, :] == positions                # [B, L]
    changed = jnp.where(changing[:, None, :], candidates, z[:, None, :])   # [B, V, L]
    onehot = jax.nn.one_hot(changed.reshape(batch * vocab_size, length), vocab_size,
                            dtype=jnp.float32)
    scores = _target_log_prob(classifier, onehot, t_rep, target_rep)
    return (scores.reshape(batch, 1, vocab_size),)

  return in_rounds(selected, 1, at_positions)[0]


def gradient_classifier_scores(classifier: Classifier, z: jax.Array, t: jax.Array,
                               target: jax.Array, vocab_size: int) -> jax.Array:
  """First-order `log p(y = target | z with z_l = v, t)` up to a constant per position:
  `g_l[v] - g_l[z_l]`, `g = d log p(y | x) / d x` at `x = one_hot(z)`; `[B, L, V] float32`.
  One classifier call and its gradient per step."""
  classifier = ensure_classifier(classifier)
  onehot = jax.nn.one_hot(z, vocab_size, dtype=jnp.float32)            # [B, L, V]
  grad = jax.grad(lambda x: jnp.sum(_target_log_prob(classifier, x, t, target)))(onehot)
  return grad - jnp.take_along_axis(grad, z[..., None], axis=-1)


@dataclasses.dataclass(frozen=True)
class _CbgCall:
  """D-CBG of a denoiser and a classifier function: `(params, z, t) -> [B, L, V] f32`
  log-probabilities, params `(denoiser params, classifier params, gamma, target)`."""

  denoiser: Callable
  classifier: Callable
  num_classes: int | None
  form: str
  mask_id: int
  target_max: int | None = None   # the largest concrete target given (None: traced), checked
                                  # against the class count when the classifier is traced

  def __call__(self, params, z: jax.Array, t: jax.Array) -> jax.Array:
    den_params, cls_params, gamma, target = params
    classifier = Classifier(self.classifier, cls_params, self.num_classes)
    if target.shape not in ((), z.shape[:1]):
      raise ValueError(f"target must be one class or [B] = [{z.shape[0]}] classes, got shape "
                       f"{list(target.shape)}")
    log_x = jax.nn.log_softmax(self.denoiser(den_params, z, t).astype(jnp.float32),
                               axis=-1)                                       # [B, L, V]
    if not self.mask_id < log_x.shape[-1]:
      raise ValueError(f"mask_id must be in [0, V) = [0, {log_x.shape[-1]}) (the denoiser's "
                       f"logits), got {self.mask_id}")
    targets = jnp.broadcast_to(target, z.shape[:1])                           # [B]
    masked = z == self.mask_id                                                # [B, L]
    if self.form == "exact":    # only the masked positions are scored
      scores = exact_classifier_scores(classifier, z, t, targets, log_x.shape[-1], masked)
    else:                       # one gradient covers every position
      scores = gradient_classifier_scores(classifier, z, t, targets, log_x.shape[-1])
    classes = jax.eval_shape(classifier, jax.ShapeDtypeStruct(log_x.shape, jnp.float32),
                             t).shape[-1]
    _check_target(target, classes)          # concrete (an eager call): one clear error
    if self.target_max is not None and self.target_max >= classes:   # static: shapes only
      raise ValueError(f"target must hold classes in [0, {classes}) (the classifier returns "
                       f"logits [B, {classes}]), got {self.target_max}")
    known = (targets >= 0) & (targets < classes)           # [B]; else NaN, never unguided
    scores = jnp.where(known[:, None, None], scores, jnp.nan)
    return jax.nn.log_softmax(jnp.where(masked[..., None], log_x + gamma * scores, log_x),
                              axis=-1)                                        # [B, L, V]


def _check_target(target, num_classes: int | None) -> None:
  """A target class: an int or `[B]` integer ids in `[0, num_classes)` (`[0, inf)` when the
  classifier does not declare its classes). The type and shape are always checked, the
  values when concrete.

  Raises:
    ValueError: a class out of range, or no integer ids.
  """
  ids = target if isinstance(target, jax.core.Tracer) else np.asarray(target)
  if ids.dtype == object or not np.issubdtype(ids.dtype, np.integer) or ids.ndim > 1:
    raise ValueError(f"target must be a class id (an int) or [B] integer ids, got {target!r}")
  if isinstance(target, jax.core.Tracer) or not ids.size:
    return
  high = "inf)" if num_classes is None else f"{num_classes}) (the classifier's classes)"
  low_id, high_id = int(ids.min()), int(ids.max())
  if low_id < 0 or (num_classes is not None and high_id >= num_classes):
    raise ValueError(f"target must hold classes in [0, {high}, got "
                     f"{low_id if low_id < 0 else high_id}")


def classifier_guidance(denoiser, classifier, *, target, gamma, mask_id: int,
                        form: str = DEFAULT_FORM) -> Denoiser:
  """D-CBG as a denoiser: `x_theta` reweighted at masked positions by the classifier's
  probability of `target` after each single-token change (module docstring).

  Args:
    denoiser: a `Denoiser` (or function `(z [B, L] int32, t [B] float32) -> logits [B, L, V]`).
    classifier: a `Classifier` (or function `(x [B, L, V] float32, t [B] float32) -> logits
      [B, C]`), e.g. `remdm_jax.models.as_classifier(model)`.
    target: the class to steer towards: an int, or `[B] int32` per example (traced is fine).
    gamma: guidance strength (0: the denoiser unchanged); a finite number, or traced data.
    mask_id: the mask token; only masked positions are reweighted. The result declares it
      (`Denoiser.mask_id`): a sampler with another mask id refuses it.
    form: "gradient" (default: one call and one gradient per step) or "exact" (`V`
      classifier inputs per masked position per example and step).

  Returns:
    A `Denoiser` returning `[B, L, V] float32` guided log-probabilities (normalised over V);
    its params are `(denoiser params, classifier params, gamma, target)`; it reads t (the
    classifier does).

  Raises:
    TypeError: the denoiser or classifier is neither its type nor a function.
    ValueError: gamma is not a finite number, form is unknown, a concrete target is not a
      class of the classifier (`[0, num_classes)` when it declares them; `>= 0` otherwise),
      or mask_id is negative, outside the denoiser's vocabulary or not its own. While
      sampling (when traced): the classifier's output is not `[B, C]` floating logits with
      `C >= 2`.
  """
  denoiser, classifier = ensure_denoiser(denoiser), ensure_classifier(classifier)
  check_scalar("gamma", gamma)
  check_choice("form", form, GUIDANCE_FORMS)
  _check_target(target, classifier.num_classes)
  check_int("mask_id", mask_id, 0)
  if denoiser.vocab_size is not None:
    check_range("mask_id", mask_id, 0, denoiser.vocab_size - 1,
                context=" (the denoiser's vocabulary)")
  if denoiser.mask_id is not None and denoiser.mask_id != mask_id:
    raise ValueError(f"mask_id {mask_id} differs from the denoiser's own {denoiser.mask_id}")
  params = (denoiser.params, classifier.params, jnp.asarray(gamma, jnp.float32),
            jnp.asarray(target, jnp.int32))
  top = None if isinstance(target, jax.core.Tracer) else int(np.max(target, initial=0))
  call = _CbgCall(denoiser.aligned_apply, classifier.apply, classifier.num_classes, form,
                  mask_id, top)
  return Denoiser(call, params,
                  reads_t=True, vocab_size=denoiser.vocab_size, mask_id=mask_id)


ModelAt = Callable[[int | None], Denoiser]
"""`model_at(label)`: the model's denoiser conditioned on a class (None: the null class, or
the model itself when it is not class-conditional)."""


REGISTRY = Registry("guidance", "cfg")
GUIDANCES = REGISTRY.classes        # name -> guidance class
guidance_class = REGISTRY.lookup    # name -> class; an unknown name lists the known ones


@dataclasses.dataclass(frozen=True)
class Guidance:
  """The base of the guidance choices (`NoGuidance`, `Cfg`, `Cbg`), frozen dataclasses holding
  their options, registered by `name` in `GUIDANCES`: `guidance.denoiser(model_at, target=,
  classifier=, mask_id=)` builds the denoiser to sample. `Cfg` and `Cbg` need a target class,
  `Cbg` a classifier (`check_guidance_inputs`)."""

  name: ClassVar[str] = ""
  needs_classifier: ClassVar[bool] = False
  CHOICE: ClassVar = ("kind", REGISTRY)   # --guidance.kind picks it

  def __post_init__(self):
    check_fields(self)

  def with_options(self, **options) -> Guidance:
    """A copy with flat options changed; a new `kind` starts from that guidance's defaults.

    Raises:
      ValueError: an unknown kind, or an option the guidance does not have (naming both).
    """
    return with_choice_options(self, options)

  def denoiser(self, model_at: ModelAt, *, target: int | None, classifier=None,
               mask_id: int) -> Denoiser:
    """The denoiser to sample, from `model_at(label)` (the model's denoiser at a class; None:
    the null class), the target class, the classifier (`Cbg` only) and the mask id.

    Raises:
      ValueError: a target or classifier missing where this guidance needs it, or given
        where it does not use it (`check_guidance_inputs`).
    """
    check_guidance_inputs(self, target=target, has_classifier=classifier is not None)
    return self._build(model_at, target, classifier, mask_id)

  def _build(self, model_at: ModelAt, target, classifier, mask_id: int) -> Denoiser:
    raise TypeError(f"{type(self).__name__} is not one of {sorted(GUIDANCES)}")


@REGISTRY.register
@dataclasses.dataclass(frozen=True)
class NoGuidance(Guidance):
  """No guidance: the model itself (at `target` for a class-conditional model)."""

  name: ClassVar[str] = "none"

  def _build(self, model_at: ModelAt, target, classifier, mask_id: int) -> Denoiser:
    del classifier, mask_id
    return model_at(target)


@REGISTRY.register
@dataclasses.dataclass(frozen=True)
class Cfg(Guidance):
  """Classifier-free guidance (D-CFG): the model at `target` against its null class."""

  name: ClassVar[str] = "cfg"
  gamma: float = option(1.0, "guidance strength (1: the conditional model; 0: the null class)")

  def __post_init__(self):
    super().__post_init__()
    check_scalar("gamma", self.gamma)

  def _build(self, model_at: ModelAt, target, classifier, mask_id: int) -> Denoiser:
    del classifier, mask_id
    return classifier_free_guidance(model_at(target), model_at(None), self.gamma)


@REGISTRY.register
@dataclasses.dataclass(frozen=True)
class Cbg(Guidance):
  """Classifier-based guidance (D-CBG): the null-class model reweighted by a classifier.

  The classifier of noisy sequences steers the null-class (or plain) model towards `target`."""

  name: ClassVar[str] = "cbg"
  needs_classifier: ClassVar[bool] = True
  gamma: float = option(1.0, "guidance strength (0: the model unchanged)")
  form: str = option(DEFAULT_FORM, "gradient (one call and its gradient per step) or exact")

  def __post_init__(self):
    super().__post_init__()
    check_scalar("gamma", self.gamma)
    check_choice("form", self.form, GUIDANCE_FORMS)

  def _build(self, model_at: ModelAt, target, classifier, mask_id: int) -> Denoiser:
    return classifier_guidance(model_at(None), classifier, target=target, gamma=self.gamma,
                               mask_id=mask_id, form=self.form)


def check_guidance_inputs(guidance: Guidance, *, target: int | None, has_classifier: bool,
                          ) -> None:
  """Whether a target and a classifier are given where the guidance needs them, and only
  there.

  Raises:
    TypeError: not a registered guidance object. ValueError: naming what is missing or what
      this guidance does not use.
  """
  if not isinstance(guidance, Guidance) or guidance.name not in GUIDANCES:
    raise TypeError(f"guidance must be NoGuidance(), Cfg(gamma) or Cbg(gamma, form), got "
                    f"{guidance!r:.80}")
  if guidance.name != "none" and target is None:
    raise ValueError(f"guidance {guidance.name!r} needs a target class (class_label >= 0)")
  if target is not None:
    check_range("class_label", target, 0)
  if has_classifier != guidance.needs_classifier:
    raise ValueError(f"a classifier is used by guidance 'cbg' only; got guidance "
                     f"{guidance.name!r} {'with' if has_classifier else 'without'} a "
                     "classifier")
