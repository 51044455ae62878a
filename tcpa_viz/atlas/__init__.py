"""Dataset-level and causal analysis of TCPA prompt selection: the prompt atlas and prompt importance."""

from .stats import CollapseCriteria, PromptAtlas, prompt_atlas

__all__ = ["CollapseCriteria", "PromptAtlas", "prompt_atlas"]
