"""One module per dashboard page; each exposes ``render(ctx: ViewContext) -> None``."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from app.loading import ImageCapture, LoadedModel, PreparedImage


@dataclass
class ViewContext:
    """What every view gets: the two models, the current image and its captures, the test set."""

    tcpa: LoadedModel
    tcpa_capture: ImageCapture
    image: PreparedImage
    baseline: LoadedModel | None = None
    baseline_capture: ImageCapture | None = None
    dataset: Dataset | None = None
    data_key: str = ""

    def models(self) -> list[tuple[str, LoadedModel, ImageCapture]]:
        """``(role, model, capture)`` for the baseline (when chosen) and the TCPA model, in that order."""
        out = []
        if self.baseline is not None and self.baseline_capture is not None:
            out.append(("Baseline", self.baseline, self.baseline_capture))
        out.append(("TCPA", self.tcpa, self.tcpa_capture))
        return out

    @property
    def stem(self) -> str:
        """File-name stem for exports (the image's name)."""
        return self.image.name.replace(" ", "_")
