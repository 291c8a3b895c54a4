"""The models shipped with remdm_jax (see README.md here), installed as `remdm_jax.shipped`.

This folder stays at the top of the repository; setup.cfg maps the package `remdm_jax.shipped`
to it (`package_dir`) and lists its files as package data, so an editable and a regular install
both find the models with `importlib.resources.files("remdm_jax.shipped")`. It holds no code.
"""
