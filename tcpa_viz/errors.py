"""Errors of tcpa_viz's public functions; all are :class:`tcpa_core.errors.TCPAError` subclasses whose message
says what to do, so the ``tcpa-viz`` command prints them as one ``error: ...`` line. They also subclass the
built-in exception a caller would expect (``ValueError``, ``IndexError``)."""

from __future__ import annotations

from tcpa_core.errors import TCPAError


class AnalysisArgumentError(TCPAError, ValueError):
    """An argument of an analysis or plotting function that cannot work (unknown mode, empty input, bad shape)."""


class AnalysisIndexError(AnalysisArgumentError, IndexError):
    """An index outside what the data has (a head, a query row, a patch, a pool entry, an image of a batch)."""


class FigureArgumentError(AnalysisArgumentError):
    """Figure inputs that do not fit together (e.g. a different number of datasets and checkpoints, a sample
    index outside the dataset)."""

