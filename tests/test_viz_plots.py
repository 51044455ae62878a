"""Every plot writes a decodable PNG (matplotlib) and a self-contained HTML file (plotly)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tcpa_core.layout import TokenLayout
from tcpa_viz import (
    FigureFormatError,
    aggregate_ranks,
    plot_attention_heatmap_matplotlib,
    plot_attention_heatmap_plotly,
    plot_attention_surface_matplotlib,
    plot_attention_surface_plotly,
    plot_overlay_matplotlib,
    plot_overlay_plotly,
    plot_pool_usage_matplotlib,
    plot_pool_usage_plotly,
    plot_rank_vs_layer_matplotlib,
    plot_rank_vs_layer_plotly,
    plot_selection_grid_matplotlib,
    plot_selection_grid_plotly,
    plot_selection_stats_matplotlib,
    plot_selection_stats_plotly,
    plot_token_attention_matplotlib,
    plot_token_attention_plotly,
    rank_table,
    save_figure,
    selection_stats,
    synthetic_layer,
    token_attention,
)
from tcpa_viz.saving import plotlyjs_name

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYOUT = TokenLayout(
    num_prefix=5, grid_size=(4, 6), num_cls_prompt_keys=6, num_image_prompt_keys=8, num_shared_prompt_keys=2,
    prompt_length=2,
)


@pytest.fixture(scope="module")
def layers():
    return {l: synthetic_layer(LAYOUT, batch=2, heads=3, cls_topk=2, image_topk=2, seed=l) for l in range(3)}


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, size=(48, 70, 3), dtype=np.uint8)


def assert_png(path, min_size=(50, 50)):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        # not a blank canvas
        assert len(np.unique(np.asarray(im.convert("L")))) > 2


def assert_html(path):
    text = path.read_text(encoding="utf-8")
    assert 'class="plotly-graph-div"' in text
    assert "cdn.plot.ly" not in text.split("<body>")[0]  # plotly.js is a local file, not fetched
    assert (path.parent / plotlyjs_name()).stat().st_size > 1_000_000


def figures(layers, image):
    attn = layers[2].attn
    ta = token_attention(attn, LAYOUT, (2, 3))
    stats = selection_stats(
        {l: v.cls_assign for l, v in layers.items()}, {l: v.image_assign for l, v in layers.items()}, 3, 4
    )
    agg = aggregate_ranks(rank_table({l: v.attn for l, v in layers.items()}, LAYOUT, taus=(0.9,)))
    agg_raw = aggregate_ranks(rank_table({l: v.attn_raw for l, v in layers.items()}, LAYOUT, taus=(0.9,)))
    return {
        "overlay": (lambda: plot_overlay_matplotlib(image, ta.grid[0], box=(2, 3)),
                    lambda: plot_overlay_plotly(image, ta.grid[0], box=(2, 3))),
        "token": (lambda: plot_token_attention_matplotlib(image, ta),
                  lambda: plot_token_attention_plotly(image, ta)),
        "heatmap": (lambda: plot_attention_heatmap_matplotlib(attn, LAYOUT, scale="log"),
                    lambda: plot_attention_heatmap_plotly(attn, LAYOUT, scale="sqrt")),
        "surface": (lambda: plot_attention_surface_matplotlib(attn, LAYOUT, kind="surface"),
                    lambda: plot_attention_surface_plotly(attn, LAYOUT, queries=["cls", (0, 0), (3, 5)])),
        "wireframe": (lambda: plot_attention_surface_matplotlib(attn, LAYOUT, queries="all"),
                      lambda: plot_attention_surface_plotly(attn, LAYOUT, kind="wireframe")),
        "usage": (lambda: plot_pool_usage_matplotlib(stats, pool="image"),
                  lambda: plot_pool_usage_plotly(stats, pool="cls")),
        "usage_heatmap": (lambda: plot_pool_usage_matplotlib(stats, pool="cls", style="heatmap"), None),
        "selection_grid": (lambda: plot_selection_grid_matplotlib(layers[1].image_assign, LAYOUT, background=image),
                           lambda: plot_selection_grid_plotly(layers[1].image_assign, LAYOUT, mode="set")),
        "selection_stats": (lambda: plot_selection_stats_matplotlib(stats),
                            lambda: plot_selection_stats_plotly(stats)),
        "rank": (lambda: plot_rank_vs_layer_matplotlib({"masked": agg, "raw": agg_raw}),
                 lambda: plot_rank_vs_layer_plotly({"masked": agg, "raw": agg_raw}, measure="stable_rank")),
    }


def test_all_plots_write_png_and_html(tmp_path, layers, image):
    for name, (mpl, plotly) in figures(layers, image).items():
        assert_png(save_figure(mpl(), tmp_path / f"{name}.png"))
        if plotly is not None:
            assert_html(save_figure(plotly(), tmp_path / f"{name}.html"))


def test_heatmap_separators_sit_on_group_boundaries(layers):
    fig = plot_attention_heatmap_matplotlib(layers[0].attn, LAYOUT)
    ax = fig.axes[0]
    xs = {round(float(line.get_xdata()[0]), 2) for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]
          and line.get_ydata()[0] == 0 and line.get_ydata()[1] == 1}
    ys = {round(float(line.get_ydata()[0]), 2) for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1]
          and line.get_xdata()[0] == 0 and line.get_xdata()[1] == 1}
    # keys: prefix 0-4 | CLS prompts 5-10 | image prompts 11-18 | prompts 19-20 | patches 21-44
    assert xs == {4.5, 10.5, 18.5, 20.5}
    assert ys == {4.5}
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "prefix", "CLS prompts", "image prompts", "prompts", "patches"
    ]
    assert len(fig.axes) == 2  # the colour bar


def test_other_formats_and_errors(tmp_path, layers, image):
    fig = plot_overlay_matplotlib(image, layers[0].attn[0, 0, 0, -24:].reshape(4, 6))
    assert save_figure(fig, tmp_path / "sub" / "o.pdf").read_bytes()[:4] == b"%PDF"
    assert b"<svg" in save_figure(fig, tmp_path / "o.svg").read_bytes()[:500]
    with pytest.raises(FigureFormatError, match="html"):
        save_figure(fig, tmp_path / "o.html")
    pfig = plot_overlay_plotly(image, layers[0].attn[0, 0, 0, -24:].reshape(4, 6))
    with pytest.raises(FigureFormatError, match="kaleido"):
        save_figure(pfig, tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(TypeError):
        save_figure(object(), tmp_path / "x.png")
