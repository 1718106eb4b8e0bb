"""The ``citygate`` command line (:mod:`gateway.cli.main`)."""

from gateway.cli.main import main

__all__ = ["main"]
