"""cofe: from a GaNDLF model configuration to a running, certified OpenFL federation."""

__version__ = "0.1.0"
