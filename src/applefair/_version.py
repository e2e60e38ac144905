"""The package version (one place; the package, run folders and reports read it from here)."""

__version__ = "0.1.0"
