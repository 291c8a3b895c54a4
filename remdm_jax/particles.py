"""Particle methods for the sampler's `particles=` argument: best-of-N, sequential Monte Carlo
and particle Gibbs, carried inside the compiled scan (`remdm_jax.sampling.particles` has the
methods, `remdm_jax.sampling.particle_scan` the scan)."""

from remdm_jax.sampling.particles import (BestOfN, ParticleGibbs, ParticleResult, Particles,
                                          ParticlesConfig, Smc, effective_size, resample)

__all__ = ["BestOfN", "ParticleGibbs", "ParticleResult", "Particles", "ParticlesConfig", "Smc",
           "effective_size", "resample"]
