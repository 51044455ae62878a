"""TokenLayout: where each group of tokens sits in the captured attention matrices."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLayout:
    """Column/row layout of captured attention ``[batch, head, query, key]``.

    Queries are ``[prefix | patches]``. Keys are ``[prefix | cls_prompts | image_prompts | prompts | patches]``
    where ``cls_prompts``/``image_prompts`` are the TCPA pools (``pool_size * prompt_length`` columns each,
    entry ``i`` of a pool owning columns ``i*prompt_length:(i+1)*prompt_length`` of its group) and
    ``prompts`` are the prompts every query sees (VPT-shallow/deep, VFPT). Unused groups have length 0.
    Prefix = CLS token (when the model has one) followed by register tokens.
    """

    num_prefix: int
    grid_size: tuple[int, int]
    num_cls_prompt_keys: int = 0
    num_image_prompt_keys: int = 0
    num_shared_prompt_keys: int = 0
    prompt_length: int = 1
    has_cls_token: bool = True

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_prompt_keys(self) -> int:
        return self.num_cls_prompt_keys + self.num_image_prompt_keys + self.num_shared_prompt_keys

    @property
    def num_queries(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def num_keys(self) -> int:
        return self.num_prefix + self.num_prompt_keys + self.num_patches

    @property
    def num_registers(self) -> int:
        return self.num_prefix - int(self.has_cls_token)

    def query_slices(self) -> dict[str, slice]:
        """Row ranges of the query groups: ``prefix`` and ``patches``."""
        return {"prefix": slice(0, self.num_prefix), "patches": slice(self.num_prefix, self.num_queries)}

    def key_slices(self) -> dict[str, slice]:
        """Column ranges of the key groups, in order (empty groups included with zero length)."""
        slices: dict[str, slice] = {}
        start = 0
        for name, size in (
            ("prefix", self.num_prefix),
            ("cls_prompts", self.num_cls_prompt_keys),
            ("image_prompts", self.num_image_prompt_keys),
            ("prompts", self.num_shared_prompt_keys),
            ("patches", self.num_patches),
        ):
            slices[name] = slice(start, start + size)
            start += size
        return slices

    def patch_query_index(self, row: int, col: int) -> int:
        """Query row of the patch at grid position (row, col)."""
        h, w = self.grid_size
        if not (0 <= row < h and 0 <= col < w):
            raise IndexError(f"patch ({row}, {col}) is outside the {h}x{w} patch grid")
        return self.num_prefix + row * w + col
