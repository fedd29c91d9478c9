"""The version of bayesmeta (one place, read by the package, its files and the CLI)."""

__version__ = "0.1.0"
