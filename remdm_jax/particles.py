"""Particle methods for the sampler's `particles=` argument: best-of-N and sequential Monte
Carlo, carried inside the compiled scan (`remdm_jax.sampling.particles` has the details)."""

from remdm_jax.sampling.particles import (BestOfN, ParticleGibbs, ParticleResult, Particles,
                                          ParticlesConfig, Smc, effective_size, resample)

__all__ = ["BestOfN", "ParticleGibbs", "ParticleResult", "Particles", "ParticlesConfig", "Smc",
           "effective_size", "resample"]
