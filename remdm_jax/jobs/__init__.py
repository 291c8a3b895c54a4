"""Sampling jobs as library code: load a model, sample, write atomic shards and resume
(`sample_job`), the job folder's manifest and shards (`shards`) and scoring of a job's samples
(`scoring`)."""
