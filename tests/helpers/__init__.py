"""Test helpers, imported by the test modules (conftest.py holds only fixtures): `runs` (configs composed as Hydra
does, tiny training runs, entry points run as a user runs them), `mura_trees` (small MURA-v1.1 trees written file by
file) and `fakes` (test doubles a config can name with `_target_: helpers.fakes.X`)."""
