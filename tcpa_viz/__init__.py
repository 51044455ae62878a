"""tcpa_viz: interpretability and visualisation of TCPA-prompted Vision Transformers.

Everything here is a pure function over captured tensors (``[batch, head, query, key]`` attention,
prompt assignments, features) and a :class:`tcpa_core.layout.TokenLayout`; nothing needs the model.
matplotlib figures are built without pyplot (no global state; saved with the Agg renderers) and plotly
figures are written as HTML by :func:`save_figure` (the HTML files of a folder share one offline copy of
plotly.js). Checkpoints are loaded once, as :class:`LoadedModel`, by :func:`load_run`; errors are
:class:`tcpa_core.errors.TCPAError` subclasses (:mod:`tcpa_viz.errors`).
"""

from .atlas import CollapseCriteria, ImportanceResult, PromptAtlas, prompt_atlas, prompt_importance
from .attention_maps import TokenAttention, key_column_map, token_attention
from .errors import AnalysisArgumentError, AnalysisIndexError, FigureArgumentError
from .explainers import (
    EXPLAINERS,
    Explanation,
    ExplanationError,
    FaithfulnessResult,
    explain,
    faithfulness,
    list_explainers,
)
from .explainers.report import explain_report, run_demo_explain
from .features import FeatureSet, extract_features, feature_cache_path
from .heatmap import attention_matrix, plot_attention_heatmap_matplotlib, plot_attention_heatmap_plotly
from .models import (
    LoadedModel,
    display_image,
    load_run,
    read_demo_summary,
    resolve_checkpoint,
)
from .overlay import (
    as_rgb_uint8,
    draw_patch_box,
    normalize_map,
    overlay_on_image,
    patch_box,
    plot_overlay_matplotlib,
    plot_overlay_plotly,
    plot_token_attention_matplotlib,
    plot_token_attention_plotly,
    upsample_map,
)
from .rank import (
    aggregate_ranks,
    attention_block,
    effective_rank,
    energy_rank,
    numerical_rank,
    plot_rank_vs_layer_matplotlib,
    plot_rank_vs_layer_plotly,
    rank_measures,
    rank_table,
    singular_values,
    stable_rank,
    write_rank_csv,
    write_rank_json,
)
from .rollout import attention_rollout, rollout_map, token_token_block
from .saving import FigureFormatError, NotAFigureError, save_figure, write_plotlyjs
from .selection import (
    distinct_sets,
    mean_jaccard_distance,
    plot_pool_usage_matplotlib,
    plot_pool_usage_plotly,
    plot_selection_grid_matplotlib,
    plot_selection_grid_plotly,
    plot_selection_stats_matplotlib,
    plot_selection_stats_plotly,
    pool_sizes,
    pool_usage,
    selection_grid,
    selection_stats,
    usage_entropy,
    write_assignments_csv,
)
from .surface import (
    default_surface_queries,
    plot_attention_surface_matplotlib,
    plot_attention_surface_plotly,
    surface_rows,
)
from .synthetic import SyntheticLayer, synthetic_layer
from .tables import jsonable, write_rows_csv, write_rows_json
from .tokens import key_labels, query_label, query_labels, reduce_heads, resolve_query, to_grid
from .tsne import TSNEResult, embedding_metrics, knn_accuracy, plot_tsne_matplotlib, plot_tsne_plotly, run_tsne

__all__ = [
    # dataset-level and causal prompt analysis
    "prompt_atlas", "prompt_importance", "PromptAtlas", "ImportanceResult", "CollapseCriteria",
    # attention maps and rollout
    "TokenAttention", "token_attention", "key_column_map", "attention_rollout", "rollout_map",
    "token_token_block",
    # token helpers
    "reduce_heads", "resolve_query", "query_label", "query_labels", "key_labels", "to_grid",
    # overlay
    "as_rgb_uint8", "upsample_map", "normalize_map", "patch_box", "overlay_on_image", "draw_patch_box",
    "plot_overlay_matplotlib", "plot_overlay_plotly", "plot_token_attention_matplotlib",
    "plot_token_attention_plotly",
    # heatmap and surface
    "attention_matrix", "plot_attention_heatmap_matplotlib", "plot_attention_heatmap_plotly",
    "default_surface_queries", "surface_rows", "plot_attention_surface_matplotlib",
    "plot_attention_surface_plotly",
    # prompt selection
    "pool_sizes", "pool_usage", "usage_entropy", "mean_jaccard_distance", "distinct_sets", "selection_stats",
    "selection_grid", "plot_selection_grid_matplotlib", "plot_selection_grid_plotly",
    "plot_pool_usage_matplotlib", "plot_pool_usage_plotly", "plot_selection_stats_matplotlib",
    "plot_selection_stats_plotly", "write_assignments_csv",
    # rank
    "singular_values", "energy_rank", "numerical_rank", "effective_rank", "stable_rank", "rank_measures",
    "attention_block", "rank_table", "aggregate_ranks", "write_rank_csv", "write_rank_json",
    "plot_rank_vs_layer_matplotlib", "plot_rank_vs_layer_plotly",
    # features and t-SNE
    "FeatureSet", "extract_features", "feature_cache_path", "TSNEResult", "run_tsne", "embedding_metrics",
    "knn_accuracy", "plot_tsne_matplotlib", "plot_tsne_plotly",
    # output
    "save_figure", "FigureFormatError", "NotAFigureError", "write_plotlyjs", "AnalysisArgumentError",
    "AnalysisIndexError", "FigureArgumentError", "LoadedModel", "display_image", "load_run", "read_demo_summary",
    "resolve_checkpoint",
    "write_rows_csv", "write_rows_json", "jsonable",
    # synthetic data
    "SyntheticLayer", "synthetic_layer",
    # attribution and faithfulness
    "explain", "faithfulness", "Explanation", "FaithfulnessResult", "ExplanationError", "EXPLAINERS",
    "list_explainers", "explain_report", "run_demo_explain",
]
