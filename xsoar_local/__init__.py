"""xsoar-local: a small XSOAR-like platform that runs content packs' long-running integrations on one machine."""

__version__ = "0.1.0"
