"""Prompt atlas: what each pool entry does over the whole test set, from the files of ``tcpa-viz atlas`` and
``tcpa-viz ablate`` (read by :mod:`app.loading.atlas`).

At the top, the collapse diagnostics of every block and pool (the ``atlas.json`` collapse lines, and entropy,
distinct sets, Jaccard and NMI beside their chance levels); below, for one chosen block, pool and entry: its
gallery (the test patches most similar to its key), its spatial map (image pool), its class histogram and the
ablation effect of masking or removing it. The per-token view links here through :func:`open_entry`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import sidebar, state
from app.loading.atlas import AtlasData, atlas_candidates, find_atlas_dir, folder_stamp, load_atlas, run_folder
from app.views.registry import PageContext, register_view
from app.widgets import CHART_CONFIG
from tcpa_core import TCPAError

VIEW = "atlas"
BLOCK, POOL, ENTRY = "atlas_block", "atlas_pool", "atlas_entry"
POOL_LABELS = {"cls": "CLS pool", "image": "image pool"}
ABLATION_SHOWN = ["mode", "accuracy", "delta_accuracy", "delta_true_logit", "changed_predictions",
                  "images_selecting", "images"]


def open_entry(layer: int, pool: str, entry: int) -> None:
    """Show ``entry`` of ``pool`` at block ``layer`` in the atlas view on the next run (call from a callback or
    before ``st.rerun``)."""
    st.session_state[BLOCK], st.session_state[POOL], st.session_state[ENTRY] = int(layer), str(pool), int(entry)
    st.session_state[sidebar.VIEW_REQUEST] = VIEW


def create_hint(ctx: PageContext) -> str:
    """The one line that says how to write the atlas files for the chosen TCPA checkpoint."""
    weights = ctx.entries[-1][1].weights if ctx.entries else None
    model = str(run_folder(weights)) if weights else "<TCPA checkpoint folder>"
    out = str(atlas_candidates(ctx.demo_dir, weights)[0]) if ctx.demo_dir is not None else "<demo dir>/atlas"
    return (f"No prompt atlas found (looked in {', '.join(str(p) for p in atlas_candidates(ctx.demo_dir, weights))}); "
            f"create it with `tcpa-viz atlas --model {model} --out {out}` "
            f"(and `tcpa-viz ablate --model {model} --out {out}` for the ablation effects).")


def _with_chance(stats: dict[str, Any], key: str) -> str:
    value = stats.get(key)
    if not isinstance(value, dict) or value.get("nmi") is None:
        return "–"
    return f"{value['nmi']:.3f} (chance {value['chance']:.3f})"


def diagnostics_table(atlas: AtlasData) -> pd.DataFrame:
    """One row per (block, pool): the collapse diagnostics beside their chance or random references."""
    rows = []
    for (layer, pool), b in sorted(atlas.blocks.items()):
        rows.append({
            "block": layer, "pool": pool,
            "entropy": round(float(b.get("entropy", float("nan"))), 3),
            "entries used": f"{b.get('entries_used', '–')} / {b.get('pool_size', '–')}",
            "distinct sets": f"{b.get('distinct_sets', '–')} (random {float(b.get('distinct_sets_random', 0)):.0f})",
            "Jaccard": f"{float(b.get('jaccard', float('nan'))):.3f} (random {float(b.get('jaccard_random', 0)):.3f})",
            "NMI(set; class)": _with_chance(b, "nmi_class_set"),
            "NMI(top-1; class)": _with_chance(b, "nmi_class_top1"),
            "NMI(top-1; object)": _with_chance(b, "nmi_object_top1"),
            "collapsed": "yes" if (b.get("collapse") or {}).get("collapsed") else "no",
        })
    return pd.DataFrame(rows).set_index(["block", "pool"])


def _choose(atlas: AtlasData) -> tuple[int, str, int, dict[str, Any]]:
    """The block, pool and entry widgets (values kept in ``st.session_state`` under :data:`BLOCK` ...)."""
    layers = atlas.layers
    if st.session_state.get(BLOCK) not in layers:
        st.session_state[BLOCK] = layers[-1]
    pools = atlas.pools(int(st.session_state[BLOCK]))
    if st.session_state.get(POOL) not in pools:
        st.session_state[POOL] = "image" if "image" in pools else pools[0]
    block = atlas.blocks[(int(st.session_state[BLOCK]), str(st.session_state[POOL]))]
    size = len(block["selected"])
    st.session_state[ENTRY] = min(max(int(st.session_state.get(ENTRY, 0)), 0), size - 1)
    columns = st.columns(3)
    layer = int(columns[0].selectbox("Block", layers, **state.bound(BLOCK)))
    pool = str(columns[1].radio("Pool", pools, horizontal=True, format_func=POOL_LABELS.get, **state.bound(POOL)))
    entry = int(columns[2].selectbox("Entry", list(range(size)), **state.bound(ENTRY)))
    return layer, pool, entry, block


def gallery_section(atlas: AtlasData, layer: int, pool: str, entry: int, block: dict[str, Any]) -> None:
    records = (block.get("gallery") or [[]] * (entry + 1))[entry]
    crops = atlas.galleries.get(f"L{layer}_{pool}")
    st.markdown("##### Gallery: test patches most similar to its key")
    if crops is None or not records:
        st.info("No gallery for this entry (gallery.npz is missing or holds no crops for this block).")
        return
    images = [crops[entry][i] for i in range(min(len(records), crops.shape[1]))]
    captions = [f"img {r['image']}" + (f" ({r['row']},{r['col']})" if pool == "image" else "")
                + f" sim {r['similarity']:.2f}" for r in records[:len(images)]]
    st.image(images, caption=captions, width=88)


def spatial_section(atlas: AtlasData, layer: int, pool: str, entry: int, block: dict[str, Any]) -> None:
    st.markdown("##### Spatial map")
    positions = block.get("position_selected")
    if pool != "image" or not positions:
        st.info("The CLS pool is chosen by the CLS token only, so it has no spatial map.")
        return
    h, w = (int(x) for x in atlas.meta.get("grid", (0, 0)))
    values = np.asarray(positions[entry], dtype=float)
    if h * w != values.size:
        side = int(round(np.sqrt(values.size)))
        h, w = side, values.size // max(side, 1)
    share = values.reshape(h, w) / max(int(atlas.meta.get("num_images") or 1), 1)
    fig = go.Figure(go.Heatmap(z=share, colorscale="Viridis", zmin=0, zmax=max(float(share.max()), 1e-9),
                               colorbar=dict(title="share"),
                               hovertemplate="patch (%{y}, %{x}): %{z:.2f} of the images<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title="row")
    fig.update_xaxes(title="column")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"block {layer}: share of images whose patch selects img {entry}")
    st.plotly_chart(fig, key="atlas_spatial", config=CHART_CONFIG)


def class_section(atlas: AtlasData, layer: int, pool: str, entry: int, block: dict[str, Any]) -> None:
    st.markdown("##### Class histogram")
    by_class = np.asarray(block.get("class_selected") or [], dtype=float)
    if by_class.ndim != 2 or not by_class.size:
        st.info("No per-class counts in this atlas.")
        return
    tokens = np.maximum(np.asarray(block.get("class_tokens") or np.ones(len(by_class)), dtype=float), 1)
    names = list(atlas.meta.get("class_names") or [str(c) for c in range(len(by_class))])[:len(by_class)]
    names += [str(c) for c in range(len(names), len(by_class))]
    share = by_class[:, entry] / tokens
    fig = go.Figure(go.Bar(x=names, y=share.tolist(), customdata=by_class[:, entry].tolist(),
                           hovertemplate="class %{x}: %{y:.3f} of its tokens (%{customdata:.0f})<extra></extra>"))
    who, name = ("CLS", "cls") if pool == "cls" else ("patch", "img")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), yaxis_title="share of the class's tokens",
                      xaxis_title="class", title=f"block {layer}: {who} tokens selecting {name} {entry}, by class")
    st.plotly_chart(fig, key="atlas_classes", config=CHART_CONFIG)


def ablation_section(atlas: AtlasData, layer: int, pool: str, entry: int) -> None:
    st.markdown("##### Ablation effect")
    rows = atlas.entry_ablation(layer, pool, entry)
    if rows is None or not len(rows):
        what = "no ablation.csv" if rows is None else f"block {layer} was not ablated"
        st.info(f"No ablation effect ({what}); run `tcpa-viz ablate --model ... --out {atlas.folder} "
                f"--layers {layer}`.")
        return
    shown = rows[[c for c in ABLATION_SHOWN if c in rows.columns]].set_index("mode")
    st.dataframe(shown, width="stretch")
    st.caption("**mask**: the entry's key column is hidden from every token that selected it; **remove**: it "
               "leaves the pool and the tokens re-select among the rest. delta_accuracy and delta_true_logit "
               "(mean true-class logit) are ablated minus unablated, over the test split.")
    rules = atlas.rules()
    if rules is not None:
        base = float(rules["base_accuracy"].iloc[0])
        st.caption(f"Whole-model accuracy: top-k selection {100 * base:.2f} %, " + ", ".join(
            f"{r['mode']} {100 * float(r['accuracy']):.2f} %" for _, r in rules.iterrows()) + ".")


@register_view(VIEW, "Prompt atlas", order=45, needs_image=False)
def render(ctx: PageContext) -> None:
    """Draw the prompt-atlas page."""
    st.subheader("Prompt atlas")
    weights = ctx.entries[-1][1].weights if ctx.entries else None
    folder = find_atlas_dir(ctx.demo_dir, weights)
    if folder is None:
        st.info(create_hint(ctx))
        return
    try:
        atlas = load_atlas(str(folder), folder_stamp(folder))
    except TCPAError as exc:
        st.error(str(exc))
        return
    if not atlas.blocks:
        st.info(f"{folder} holds an atlas without blocks; rewrite it with `tcpa-viz atlas`.")
        return
    meta = atlas.meta
    st.caption(f"From {folder}: {meta.get('num_images', '?')} images of the {meta.get('split', 'test')} split, "
               f"blocks {', '.join(str(x) for x in atlas.layers)}.")
    st.markdown("#### Collapse diagnostics per block")
    collapsed = [f"{layer} {pool}" for (layer, pool), b in sorted(atlas.blocks.items())
                 if (b.get("collapse") or {}).get("collapsed")]
    st.markdown(f"**Selection collapse in {len(collapsed)} of {len(atlas.blocks)} (block, pool) pairs**"
                + (f": {', '.join(collapsed)}" if collapsed else ""))
    if atlas.collapse:
        with st.expander(f"The {len(atlas.collapse)} collapse lines of atlas.json"):
            st.markdown("  \n".join(f"- {line}" for line in atlas.collapse))
    st.dataframe(diagnostics_table(atlas), width="stretch")
    st.caption("entropy: normalised entropy of how often each entry is selected (1 = uniform); distinct sets: "
               "different selected sets over all (image, token) pairs, beside uniformly random selection; Jaccard: "
               "mean overlap of selected sets (CLS: across images; image pool: patches within an image), beside "
               "two random sets; NMI beside its chance level from shuffled labels.")

    st.markdown("#### One entry")
    layer, pool, entry, block = _choose(atlas)
    tokens = max(int(block.get("tokens") or 1), 1)
    selected, top1 = int(block["selected"][entry]), int(block["top1"][entry])
    st.markdown(f"**Block {layer}, {POOL_LABELS[pool]}, entry {entry}**: selected by {selected} of {tokens} tokens "
                f"({100 * selected / tokens:.1f} %), first choice of {top1} ({100 * top1 / tokens:.1f} %).")
    gallery_section(atlas, layer, pool, entry, block)
    left, right = st.columns(2)
    with left:
        spatial_section(atlas, layer, pool, entry, block)
    with right:
        class_section(atlas, layer, pool, entry, block)
    ablation_section(atlas, layer, pool, entry)
