"""Data, no code: the registry of named models (registry.toml), installed with the package as
edgeinfer.models.data (pyproject.toml's package-dir) and read by edgeinfer/models/registry.py."""
