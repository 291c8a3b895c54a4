"""The decoder seam (`remdm_jax.sampling.decoder`): a decoder written outside the package runs
through every entry point, plans of another kind are refused in words, and the two configs
switch to each other by name or object."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax.sampling.decoder import Decoder, Finish, Needs, RunShape, Scan, StepOut

V, MASK = 5, 4


def denoiser(z, t):
  """Uniform over ids 0..3 but for a preference of `p mod 4` at position `p`."""
  preferred = jax.nn.one_hot(jnp.arange(z.shape[1]) % 4, V)
  return jnp.broadcast_to(3.0 * preferred, z.shape + (V,))


@dataclasses.dataclass(frozen=True)
class OneShot(Decoder):
  """Every masked position takes its argmax in one call."""

  def start(self, denoiser, plan, prompt, shape: RunShape, needs: Needs) -> Scan:
    z = (jnp.full((shape.batch_size, shape.seq_len), shape.mask_id, jnp.int32)
         if prompt is None else prompt)

    def step(z, index, keys):
      logits = denoiser(z, jnp.ones((shape.batch_size,), jnp.float32))
      masked = z == shape.mask_id
      best = jnp.argmax(logits.at[..., shape.mask_id].set(-jnp.inf), axis=-1).astype(jnp.int32)
      tokens = jnp.where(masked, best, z)
      return tokens, StepOut(tokens, masked, jnp.zeros_like(masked), jnp.bool_(True),
                             jnp.bool_(True), None, None)

    finish = lambda z: Finish(z, jnp.zeros((shape.batch_size,), bool),
                              jnp.zeros(z.shape, bool), jnp.bool_(False), None)
    return Scan(z, jnp.arange(1), step, finish)

  def check_plan(self, plan):
    return plan

  def trajectory_length(self, plan, extent):
    return 1

  def times(self, plan, steps):
    return jnp.ones((steps,), jnp.float32)


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["rule"])
@dataclasses.dataclass(frozen=True)
class OneShotPlan:
  rule: OneShot = OneShot()


@dataclasses.dataclass(frozen=True)
class OneShotConfig:
  """A decoder's own config: it builds its plan."""

  def build_plan(self):
    plan = OneShotPlan()
    return plan, plan.rule


def test_a_decoder_of_ones_own_runs_through_every_entry_point():
  want = np.broadcast_to(np.arange(8) % 4, (2, 8))
  cfg = OneShotConfig()
  np.testing.assert_array_equal(remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=2,
                                                 seq_len=8, mask_id=MASK), want)
  run = remdm_jax.make_sampler(denoiser, cfg, batch_size=2, seq_len=8, mask_id=MASK,
                               return_trajectory=True)
  trajectory = run(jax.random.key(1))
  np.testing.assert_array_equal(trajectory.tokens, want)
  assert run.num_steps() == 1 and trajectory.steps.shape == (1, 2, 8)
  plan, rule = remdm_jax.build_plan(cfg)
  np.testing.assert_array_equal(remdm_jax.sample_with_plan(
      jax.random.key(2), denoiser, plan, rule, batch_size=2, seq_len=8, mask_id=MASK), want)


def test_a_config_whose_plan_has_no_decoder_is_refused():
  @dataclasses.dataclass(frozen=True)
  class Broken:
    def build_plan(self):
      return OneShotPlan(), "not a decoder"

  with pytest.raises(TypeError, match="Broken.build_plan.. must return .plan, rule. with "
                                      "plan.rule the rule, a .*Decoder; got a str rule"):
    remdm_jax.build_plan(Broken())


def test_a_rule_of_another_kind_is_named_not_crashed_on():
  block_plan, _ = remdm_jax.build_plan(remdm_jax.sampler_config("llada", block_length=4))
  _, step_rule = remdm_jax.build_plan(remdm_jax.sampler_config("cap", num_steps=4))
  with pytest.raises(ValueError, match=r"rule is not the plan's own \(kind: BlockPlan "
                                       r"\(StepRule\) -> BlockPlan \(BlockRule\)"):
    remdm_jax.sample_with_plan(jax.random.key(0), denoiser, block_plan, step_rule,
                               batch_size=2, seq_len=8, mask_id=MASK)


def test_the_two_configs_switch_by_name_or_object():
  block = remdm_jax.sampler_config("llada", block_length=8, kv_cache="dual")
  assert isinstance(block, remdm_jax.BlockConfig) and block.steps_per_block == 8
  assert block.with_options(strategy="cap", eta=0.1) == remdm_jax.sampler_config("cap", eta=0.1)
  assert block.with_options(strategy=remdm_jax.Cap(eta=0.1)) == remdm_jax.SamplerConfig(
      strategy=remdm_jax.Cap(eta=0.1))
  assert remdm_jax.SamplerConfig().with_options(strategy=block, num_steps=2) == (
      dataclasses.replace(block, num_steps=2))
  assert remdm_jax.sampler_config(**block.options()) == block
  with pytest.raises(ValueError, match="strategy 'llada' has no diffusion-time table"):
    remdm_jax.build_table(block)


def test_the_help_shows_a_none_default_as_the_flag_takes_it(capsys):
  from remdm_jax import cli
  assert cli.sample_main(["--help=sampler"]) == 0
  assert "--sampler.num_steps=none" in capsys.readouterr().out
  configs, _ = cli.parse_sections(["--sampler.strategy=llada", "--sampler.num_steps=none"],
                                  cli.SAMPLE_SECTIONS)
  assert configs["sampler"].num_steps is None and configs["sampler"].steps_per_block == 32
