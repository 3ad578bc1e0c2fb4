"""The one seam to the federated-learning engine (OpenFL) and GaNDLF: nothing outside this package
imports either. Importing any module here first defers GaNDLF's rarely used heavy modules
(gandlf_imports.py), before anything imports GaNDLF."""

from cofe_cli.engine.gandlf_imports import defer_unused_modules

defer_unused_modules()
