"""Errors of tcpa_viz's public functions; all are :class:`tcpa_core.errors.TCPAError` subclasses whose message
says what to do, so the ``tcpa-viz`` command prints them as one ``error: ...`` line."""

from __future__ import annotations

from tcpa_core.errors import TCPAError


class FigureArgumentError(TCPAError, ValueError):
    """Figure inputs that do not fit together (e.g. a different number of datasets and checkpoints, a sample
    index outside the dataset)."""


class IncomparableModelsError(FigureArgumentError):
    """Two checkpoints that cannot be compared on the same images: different backbones, input sizes or patch
    grids."""
