"""Scale-out: multi-process runs on `jax.distributed` (`distributed`), parameter sharding rules
over the "model" mesh axis (`sharding`) and one run at a time per folder (`locks`)."""
