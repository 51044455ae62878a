"""Named exceptions. Every one carries a message that says what went wrong and what to do."""

from __future__ import annotations


class TCPAError(Exception):
    """Base class of every error raised on purpose by tcpa_core and tcpa_viz."""


class PromptConfigError(TCPAError, ValueError):
    """A PromptConfig that cannot work (top-k larger than the pool, empty pool for TCPA, ...)."""


class UnsupportedModelError(TCPAError, TypeError):
    """The backbone is not a timm VisionTransformer this wrapper knows how to prompt."""


class CaptureError(TCPAError, ValueError):
    """Arguments of ``capture`` that cannot be recorded (unknown names, layers out of range, a dtype that is
    not floating, a device that does not exist)."""


class BackboneArgumentError(UnsupportedModelError):
    """Arguments for ``timm.create_model`` (``--backbone-kwargs``) that timm rejects."""


class InputShapeError(TCPAError, ValueError):
    """An input tensor or image whose size, channels or dtype the backbone cannot take."""


class ImageFormatError(TCPAError, ValueError):
    """A file or upload that is not a readable image, or one too large to decode safely."""


class CheckpointError(TCPAError, RuntimeError):
    """A checkpoint file that is missing, corrupt, or incomplete."""


class BackboneMismatchError(CheckpointError):
    """A checkpoint (or backbone weight file) that was made for another backbone."""


class DatasetError(TCPAError, RuntimeError):
    """A dataset that is missing on disk, malformed, or empty."""


class EmptyDatasetError(DatasetError):
    """A dataset (or split) with no samples."""


class TrainConfigError(TCPAError, ValueError):
    """A training configuration that cannot work (bad epochs, batch size, learning rate, ...)."""


class TrainingError(TCPAError, RuntimeError):
    """Training failed (e.g. the loss became NaN or infinite)."""


class RunLockedError(TCPAError, RuntimeError):
    """A run folder that another live process is writing (its lock names the holder)."""


class RunExistsError(TCPAError, FileExistsError):
    """A run folder that already holds a run, which a new run would replace (use --resume or --force)."""


class DeviceError(TCPAError, ValueError):
    """A device string that torch does not know, or a device this machine does not have."""


class OutputPathError(TCPAError, OSError):
    """An output path that names a file where a folder is needed (or the reverse), or that cannot be written."""
