"""Cached loading for the dashboard, one module per responsibility.

:mod:`~app.loading.checkpoints` (which checkpoints exist; JSON headers only), :mod:`~app.loading.models`
(loaded models shared by every session), :mod:`~app.loading.data` (test images and uploads),
:mod:`~app.loading.captures` (what the models record on an image or a batch), :mod:`~app.loading.analysis`
(dataset-level numbers: features, t-SNE, rank), :mod:`~app.loading.predictions` (predictions on a split and the
confusion numbers) and :mod:`~app.loading.history` (training curves of a run). Heavy objects live in
``st.cache_resource`` and are never modified after creation; small picklable results use ``st.cache_data``.
"""

from app.loading.analysis import (
    assignments_csv,
    dataset_features,
    dataset_labels,
    rank_aggregate,
    stratified_indices,
    tsne,
)
from app.loading.captures import BatchSelection, ImageCapture, batch_selection, batches, capture_image
from app.loading.checkpoints import (
    CHECKPOINTS_ENV,
    DEMO_DIR_ENV,
    CheckpointInfo,
    checkpoint_info,
    default_choice,
    describe_checkpoint,
    discover_checkpoints,
    extra_checkpoint_paths,
    resolve_demo_dir,
    summary_test_accuracy,
)
from app.loading.data import (
    PreparedImage,
    dataset_image,
    dataset_spec,
    open_dataset,
    upload_digest,
    upload_image,
)
from app.loading.history import history_stamp, run_history
from app.loading.models import DashboardModel, load_model, parameter_counts
from app.loading.predictions import confusion_matrix, differing_rows, per_class_accuracy, split_predictions

__all__ = [
    "CHECKPOINTS_ENV", "DEMO_DIR_ENV", "BatchSelection", "CheckpointInfo", "DashboardModel", "ImageCapture",
    "PreparedImage", "assignments_csv", "batch_selection", "batches", "capture_image", "checkpoint_info",
    "confusion_matrix", "dataset_features", "dataset_image", "dataset_labels", "dataset_spec", "default_choice",
    "describe_checkpoint", "differing_rows", "discover_checkpoints", "extra_checkpoint_paths", "history_stamp",
    "load_model", "open_dataset", "parameter_counts", "per_class_accuracy", "rank_aggregate", "resolve_demo_dir",
    "run_history", "split_predictions", "stratified_indices", "summary_test_accuracy", "tsne", "upload_digest",
    "upload_image",
]
