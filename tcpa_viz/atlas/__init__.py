"""Dataset-level and causal analysis of TCPA prompt selection: the prompt atlas and prompt importance."""

from .importance import ABLATION_COLUMNS, ImportanceResult, prompt_importance
from .outputs import run_demo_atlas, write_ablation, write_atlas
from .stats import CollapseCriteria, PromptAtlas, prompt_atlas

__all__ = [
    "ABLATION_COLUMNS", "CollapseCriteria", "ImportanceResult", "PromptAtlas", "prompt_atlas", "prompt_importance",
    "run_demo_atlas", "write_ablation", "write_atlas",
]
