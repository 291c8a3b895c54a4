"""The sampler room: `make_sampler` / `sample`, the `SamplerConfig`, the strategies and their
step tables, block decoding, the per-step draws and top-p. It imports the shared core only
(no jobs, training, data or weight files).

Modules: `sampler` (checks a call and runs the plan's decoder), `decoder` (the protocol a
decoder implements), `config` (`SamplerConfig`, `BlockConfig`) and `strategies`, `steps` (the
diffusion-step decoder and its table), `blocks` and `windows` (the block decoder and its model
calls), `plan` (configs as plans), `step_rules`, `posterior`, `topp`,
`rounds`, `checks` (argument checks, the non-finite-logits error), `trajectory`.
"""

from remdm_jax.sampling.blocks import BlockPlan, BlockRule, BlockTable
from remdm_jax.sampling.config import BlockConfig, SamplerConfig, sampler_config
from remdm_jax.sampling.plan import Plan, StepRule, StepTable, build_plan, build_table
from remdm_jax.sampling.sampler import (NonFiniteLogitsError, Sampler, make_sampler, sample,
                                        sample_with_plan)
from remdm_jax.sampling.strategies import STRATEGIES, Strategy
from remdm_jax.sampling.trajectory import Trajectory

__all__ = ["BlockConfig", "BlockPlan", "BlockRule", "BlockTable", "NonFiniteLogitsError", "Plan",
           "STRATEGIES", "Sampler", "SamplerConfig", "StepRule", "StepTable", "Strategy",
           "Trajectory", "build_plan", "build_table", "make_sampler", "sample",
           "sample_with_plan", "sampler_config"]
