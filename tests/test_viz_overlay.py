"""Overlay geometry on non-square grids, register tokens and image sizes that do not divide evenly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcpa_core.layout import TokenLayout
from tcpa_viz import (
    as_rgb_uint8,
    draw_patch_box,
    overlay_on_image,
    patch_box,
    token_attention,
    upsample_map,
)
from tcpa_viz.colors import get_cmap

LAYOUT = TokenLayout(num_prefix=5, grid_size=(4, 6), num_cls_prompt_keys=3, num_image_prompt_keys=5)


def hot_key_attention(row: int, col: int, query: int = 0) -> torch.Tensor:
    """Attention where ``query`` puts 0.6 on the patch key (row, col) and 0.1 on a prompt and the CLS."""
    attn = torch.zeros(2, 3, LAYOUT.num_queries, LAYOUT.num_keys)
    key = LAYOUT.key_slices()["patches"].start + row * LAYOUT.grid_size[1] + col
    attn[:, :, query, key] = 0.6
    attn[:, :, query, LAYOUT.key_slices()["cls_prompts"].start] = 0.1
    attn[:, :, query, 0] = 0.1
    return attn


@pytest.mark.parametrize("row,col", [(0, 0), (2, 4), (3, 5), (1, 0)])
@pytest.mark.parametrize("image_size", [(48, 72), (50, 90), (37, 53), (64, 64)])
def test_hot_patch_peaks_inside_its_pixel_box(row, col, image_size):
    ta = token_attention(hot_key_attention(row, col, query=2), LAYOUT, "register:1")
    assert ta.grid.shape == (2, 4, 6)
    g = ta.grid[0].numpy()
    assert np.unravel_index(np.argmax(g), g.shape) == (row, col)
    assert float(ta.prompt_total()[0]) == pytest.approx(0.1)
    up = upsample_map(ta.grid[0], image_size)
    assert up.shape == image_size
    y, x = np.unravel_index(np.argmax(up), up.shape)
    x0, y0, x1, y1 = patch_box(LAYOUT.grid_size, image_size, row, col)
    assert x0 <= x + 0.5 <= x1 and y0 <= y + 0.5 <= y1
    # the hot patch's centre pixel carries most of the mass; the farthest corner gets none
    cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
    assert up[cy, cx] > 0.4
    far = (0 if row >= 2 else image_size[0] - 1, 0 if col >= 3 else image_size[1] - 1)
    assert up[far] == pytest.approx(0.0, abs=1e-6)


def test_batched_upsampling_matches_single():
    maps = torch.rand(3, 4, 6)
    up = upsample_map(maps, (20, 33))
    assert up.shape == (3, 20, 33)
    np.testing.assert_allclose(up[1], upsample_map(maps[1], (20, 33)), rtol=1e-6)


@pytest.mark.parametrize("image_size", [(48, 72), (50, 90), (37, 53)])
def test_nearest_upsampling_gives_every_pixel_its_owning_patch(image_size):
    grid = np.arange(24, dtype=np.float32).reshape(4, 6)
    up = upsample_map(grid, image_size, interpolation="nearest")
    owner = np.full(image_size, -1.0)
    for (row, col), value in np.ndenumerate(grid):
        x0, y0, x1, y1 = patch_box((4, 6), image_size, row, col)
        ys, xs = np.arange(image_size[0]) + 0.5, np.arange(image_size[1]) + 0.5
        inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        owner[inside] = value
    np.testing.assert_array_equal(up, owner)
    with pytest.raises(ValueError, match="interpolation"):
        upsample_map(grid, image_size, interpolation="cubic")


def test_overlay_alpha_extremes_and_dtype():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(50, 90, 3), dtype=np.uint8)
    grid = rng.random((4, 6))
    out0 = overlay_on_image(img, grid, alpha=0.0)
    assert out0.dtype == np.uint8 and out0.shape == img.shape
    np.testing.assert_array_equal(out0, img)
    out1 = overlay_on_image(img, grid, alpha=1.0, cmap="viridis")
    heat = upsample_map(grid, (50, 90))
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    want = np.round(get_cmap("viridis")(heat)[..., :3] * 255).astype(np.uint8)
    assert np.abs(out1.astype(int) - want.astype(int)).max() <= 1
    with pytest.raises(ValueError):
        overlay_on_image(img, grid, alpha=1.5)


def test_patch_box_and_drawn_box_on_non_square_grid():
    assert patch_box((4, 6), (50, 90), 2, 4) == (60.0, 25.0, 75.0, 37.5)
    img = np.zeros((50, 90, 3), dtype=np.uint8)
    boxed = draw_patch_box(img, (4, 6), 2, 4, color=(255, 0, 0), thickness=1)
    red = np.argwhere(boxed[..., 0] == 255)
    assert red[:, 0].min() == 25 and red[:, 0].max() == 37
    assert red[:, 1].min() == 60 and red[:, 1].max() == 74
    assert boxed[30, 66].sum() == 0  # interior untouched
    assert img.sum() == 0  # input not modified
    with pytest.raises(IndexError):
        draw_patch_box(img, (4, 6), 4, 0)


def test_image_conversion():
    chw = torch.rand(3, 10, 12)
    out = as_rgb_uint8(chw)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 1], np.round(chw[1].numpy() * 255).astype(np.uint8))
    gray = as_rgb_uint8(np.full((5, 7), 200, dtype=np.uint8))
    assert gray.shape == (5, 7, 3) and np.all(gray == 200)
    normalised = as_rgb_uint8(np.linspace(-2.0, 2.0, 5 * 7 * 3).reshape(5, 7, 3))
    assert normalised.min() == 0 and normalised.max() == 255
