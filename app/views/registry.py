"""The registry of dashboard pages: each view module registers its ``render`` function with
:func:`register_view`; the sidebar lists :func:`list_views` and the dashboard draws :func:`get_view`.

Adding a page is one module under ``app/views/`` (imported by ``app/views/__init__.py``)::

    @register_view("my-view", "My view", order=60)
    def render(ctx: ImageContext) -> None: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from app.loading import CheckpointInfo, DashboardModel, ImageCapture, PreparedImage


@dataclass
class PageContext:
    """What every view gets: the chosen checkpoints (loaded or not), the demo summary and the test set."""

    tcpa: DashboardModel | None
    baseline: DashboardModel | None
    entries: list[tuple[str, CheckpointInfo, DashboardModel | None]]
    """``(role, checkpoint, loaded model or None)`` of the baseline (when chosen) and the TCPA model."""
    summary: dict[str, Any]
    dataset: Dataset | None
    data_key: str
    demo_dir: Path | None = field(default=None, kw_only=True)
    """The folder the checkpoints are listed from (views look for the demo's outputs there)."""


@dataclass
class ImagePageContext(PageContext):
    """A page about the current image that does not need the models' captures of it (no forward pass is run
    for such a page)."""

    image: PreparedImage

    @property
    def model(self) -> DashboardModel:
        """The TCPA model (always loaded for an image page)."""
        assert self.tcpa is not None
        return self.tcpa

    def compared(self) -> list[tuple[str, DashboardModel]]:
        """``(role, model)`` for the baseline (when loaded) and the TCPA model, in that order."""
        return [*([("Baseline", self.baseline)] if self.baseline is not None else []), ("TCPA", self.model)]

    @property
    def stem(self) -> str:
        """File-name stem for exports (the image's name)."""
        return self.image.name.replace(" ", "_")


@dataclass
class ImageContext(ImagePageContext):
    """A page about the current image: both models' captures of it (the baseline's is ``None`` when absent)."""

    tcpa_capture: ImageCapture
    baseline_capture: ImageCapture | None

    def models(self) -> list[tuple[str, DashboardModel, ImageCapture]]:
        """``(role, model, capture)`` for the baseline (when chosen) and the TCPA model, in that order."""
        out = []
        if self.baseline is not None and self.baseline_capture is not None:
            out.append(("Baseline", self.baseline, self.baseline_capture))
        out.append(("TCPA", self.model, self.tcpa_capture))
        return out


@dataclass(frozen=True)
class View:
    """A registered page: ``name`` (stable id, the sidebar's value), ``label`` (shown), ``render``, whether it
    needs the current image and whether it needs the models' captures of it (``render`` then gets an
    :class:`ImageContext`; an image without captures an :class:`ImagePageContext`; else a :class:`PageContext`)."""

    name: str
    label: str
    render: Callable[[Any], None]
    order: int
    needs_image: bool = True
    needs_capture: bool = True


VIEWS: dict[str, View] = {}


def register_view(name: str, label: str, order: int, needs_image: bool = True, needs_capture: bool = True
                  ) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Decorator registering ``render`` as the page ``name``; a second registration of a name is an error."""
    def decorate(render: Callable[[Any], None]) -> Callable[[Any], None]:
        if name in VIEWS:
            raise ValueError(f"the dashboard view {name!r} is registered twice")
        VIEWS[name] = View(name=name, label=label, render=render, order=order, needs_image=needs_image,
                           needs_capture=needs_image and needs_capture)
        return render
    return decorate


def list_views() -> list[View]:
    """Every registered view in sidebar order."""
    return sorted(VIEWS.values(), key=lambda v: (v.order, v.name))


def get_view(name: str) -> View:
    """The view ``name`` (``KeyError`` naming the registered ones when unknown)."""
    try:
        return VIEWS[name]
    except KeyError:
        raise KeyError(f"unknown dashboard view {name!r}; registered: {', '.join(VIEWS)}") from None
