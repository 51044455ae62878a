"""Selection shared by the views (patch, layer, head, test image ...) kept in ``st.session_state``, and its
validation against the current models and data.

Only one view is drawn per script run, and Streamlit forgets the value of a widget that was not drawn in
a run. The shared values therefore live under plain keys (``patch_row``, ``layer`` ...) and every widget
that edits one is bound to it with :func:`bound` (a mirror widget key filled from the value before the
widget is drawn, copied back by its ``on_change`` callback).

A stored selection can outlive what it refers to: a patch of an 8x8 grid after a 14x14 model is chosen, a
head index the other model does not have, a test index past the end of another data set, or a click sent by a
chart that was drawn for the previous model. Every full run therefore checks the stored values against the
current :class:`Scope` (:func:`check_selection`, called by :func:`ensure` before any widget is drawn); a value
that no longer applies is reset and a note says so once (:func:`show_notes`). Clicks on charts carry the patch
grid they were drawn for and are ignored, with a note, when it is not the current one. A value set by a click
or a reset gives its bound widget a new key (:func:`set_shared`), so the old value that a browser still shows
while the rerun is drawing cannot be copied back over it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

import streamlit as st

PATCH_ROW = "patch_row"
PATCH_COL = "patch_col"
LAYER = "layer"
HEADS = "heads"
IMAGE_INDEX = "image_index"
EXPLAIN_TARGET = "att_explain_target"
WIDGET_PREFIX = "w_"
GRID_CHART = "grid_chart"
SCOPE = "selection_scope"
"""The :class:`Scope` (as a dict) the stored selection was last checked against."""
NOTES = "selection_notes"
"""Notes about reset selections or ignored clicks, shown once by :func:`show_notes`."""
GENERATIONS = "shared_generations"
"""Per shared value, how often it was set from outside its widget (see :func:`mirror_key`)."""
REVISIONS = "chart_revisions"
"""Per clickable chart or patch panel, the number of clicks handled (see :func:`chart_meta`)."""
REMEMBERED = "remembered_values"
"""Per name, the last ``(key, value)`` built by :func:`remembered`."""

T = TypeVar("T")


@dataclass(frozen=True)
class Scope:
    """What the stored selection refers to: the TCPA model shown (``model``, its label), its patch grid
    ``(h, w)``, depth and the head count every compared model has, its class count, the test set (``dataset``:
    the data set's description, ``images``: its size, ``None`` without one)."""

    model: str
    grid: tuple[int, int]
    depth: int
    heads: int
    classes: int
    dataset: str = ""
    images: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scope:
        return cls(**{**data, "grid": tuple(data["grid"])})


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _index_below(value: Any, count: int) -> bool:
    """Whether ``value`` reads as an integer in ``[0, count)``."""
    number = _int(value)
    return number is not None and 0 <= number < count


def check_selection(store: MutableMapping[str, Any], scope: Scope, previous: Scope | None = None) -> list[str]:
    """Reset every value of ``store`` (the session state) that does not apply to ``scope``; returns one note
    per reset. ``previous`` is the scope the values were chosen in (``None``: unknown, range checks only).

    - patch: outside the grid -> the centre; chosen on another grid -> the patch at the same image position;
    - layer: outside the depth, or chosen on a model of another depth -> the last block;
    - heads: a head index the models do not have -> the mean over heads;
    - test image: past the end of the test set, or chosen in another data set -> image 0;
    - explanation target class: a class the model does not have -> the predicted class.
    Missing values get their defaults without a note.
    """
    notes: list[str] = []
    h, w = scope.grid
    where = f"{scope.model} ({h}x{w} patches, {scope.depth} blocks)"
    row, col = _int(store.get(PATCH_ROW)), _int(store.get(PATCH_COL))
    if row is None or col is None:
        store[PATCH_ROW], store[PATCH_COL] = h // 2, w // 2
    elif previous is not None and previous.grid != scope.grid:
        ph, pw = previous.grid
        new = (min(max(int((row + 0.5) * h / ph), 0), h - 1), min(max(int((col + 0.5) * w / pw), 0), w - 1))
        store[PATCH_ROW], store[PATCH_COL] = new
        notes.append(f"The selected patch ({row}, {col}) was chosen on a {ph}x{pw} patch grid; {where} has "
                     f"{h}x{w}, so the patch at the same image position, ({new[0]}, {new[1]}), is selected.")
    elif not (0 <= row < h and 0 <= col < w):
        store[PATCH_ROW], store[PATCH_COL] = h // 2, w // 2
        notes.append(f"The selected patch ({row}, {col}) is outside the patch grid of {where}; reset to the "
                     f"centre patch ({h // 2}, {w // 2}).")
    layer = _int(store.get(LAYER))
    if layer is None:
        store[LAYER] = scope.depth - 1
    elif not 0 <= layer < scope.depth or (previous is not None and previous.depth != scope.depth):
        store[LAYER] = scope.depth - 1
        reason = "does not exist in" if not 0 <= layer < scope.depth else "was chosen on a model of another depth than"
        notes.append(f"Layer {layer} {reason} {where}; reset to the last block, {scope.depth - 1}.")
    heads = store.get(HEADS)
    if heads is None:
        store[HEADS] = "mean"
    elif heads not in ("mean", "max") and not _index_below(heads, scope.heads):
        store[HEADS] = "mean"
        notes.append(f"Head {heads} does not exist in every compared model ({scope.heads} heads); reset to the "
                     "mean over heads.")
    index = _int(store.get(IMAGE_INDEX))
    if scope.images is not None and index is not None:
        if not 0 <= index < scope.images:
            store[IMAGE_INDEX] = 0
            notes.append(f"Test image {index} does not exist in the test set of {scope.model} ({scope.images} "
                         "images); showing test image 0.")
        elif previous is not None and previous.dataset != scope.dataset and index != 0:
            store[IMAGE_INDEX] = 0
            notes.append(f"Test image {index} was chosen in another data set than {scope.model}'s; showing test "
                         "image 0.")
    target = store.get(EXPLAIN_TARGET)
    if target not in (None, "predicted") and not _index_below(target, scope.classes):
        store[EXPLAIN_TARGET] = "predicted"
        notes.append(f"Explanation target class {target} does not exist in {scope.model} ({scope.classes} "
                     "classes); explaining the predicted class.")
    return notes


def ensure(scope: Scope) -> None:
    """Check the stored selection against ``scope`` (see :func:`check_selection`) and remember the scope;
    call it on every full run before any widget bound to a shared value is drawn."""
    state = st.session_state
    previous = Scope.from_dict(state[SCOPE]) if isinstance(state.get(SCOPE), Mapping) else None
    shared = (PATCH_ROW, PATCH_COL, LAYER, HEADS)
    before = {name: state.get(name) for name in shared}
    notes = check_selection(cast(MutableMapping[str, Any], state), scope, previous)
    for name in shared:
        if before[name] is not None and state[name] != before[name]:
            set_shared(name, state[name])
    state[SCOPE] = asdict(scope)
    if notes:
        state[NOTES] = [*state.get(NOTES, []), *notes]


def current_scope() -> Scope | None:
    """The scope of the last full run (``None`` before the first)."""
    data = st.session_state.get(SCOPE)
    return Scope.from_dict(data) if isinstance(data, Mapping) else None


def note(text: str) -> None:
    """Queue a note for :func:`show_notes`."""
    st.session_state[NOTES] = [*st.session_state.get(NOTES, []), text]


def show_notes() -> None:
    """Show the queued notes once (an info box each)."""
    for text in st.session_state.pop(NOTES, []):
        st.info(text, icon=":material/restart_alt:")


def default(key: str, value: float, low: float, high: float) -> str:
    """Give the widget ``key`` its default ``value`` on first use and keep its value in ``[low, high]``
    (the range changes with the model or data set); returns ``key``. The widget itself gets no ``value``."""
    current = st.session_state.get(key, value)
    st.session_state[key] = type(value)(min(max(current, low), high))
    return key


def mirror_key(name: str) -> str:
    """Key of the widget bound to the shared value ``name``: ``w_<name>``, with ``_<n>`` appended once the value
    has been set ``n`` times by something else than that widget (a click, a reset; see :func:`set_shared`)."""
    generation = int(st.session_state.get(GENERATIONS, {}).get(name, 0))
    return WIDGET_PREFIX + name + (f"_{generation}" if generation else "")


def bound(name: str) -> dict[str, Any]:
    """Widget keyword arguments binding a widget to the shared value ``name``: ``key`` and ``on_change``."""
    key = mirror_key(name)
    st.session_state[key] = st.session_state[name]
    return {"key": key, "on_change": _copy_back, "args": (name, key)}


def _copy_back(name: str, key: str) -> None:
    """``on_change`` of a bound widget. A browser that has not yet drawn the last run still shows (and sends)
    the widget's previous value, for instance when another control is used while a click's rerun is drawing;
    that value belongs to an older widget key and must not undo the click, so only the current key is copied."""
    if key == mirror_key(name):
        st.session_state[name] = st.session_state[key]


def set_shared(name: str, value: Any) -> None:
    """Set the shared value ``name`` from outside its widget; the widget is then drawn under a new key."""
    st.session_state[name] = value
    generations = dict(st.session_state.get(GENERATIONS, {}))
    generations[name] = int(generations.get(name, 0)) + 1
    st.session_state[GENERATIONS] = generations


def select_patch(row: int, col: int) -> None:
    """Make ``(row, col)`` the selected patch."""
    set_shared(PATCH_ROW, int(row))
    set_shared(PATCH_COL, int(col))


def chart_meta(chart_key: str) -> dict[str, int]:
    """The ``layout.meta`` of a clickable plotly chart, or the ``revision`` sent to a patch-panel component: the
    count of its clicks handled so far. Each handled click thus redraws a plotly chart as a new element with no
    selection left over, so a later click on the same point (after the image was changed another way) is
    reported again; browser tests read it to know the click was handled and the element redrawn."""
    return {"revision": int(st.session_state.get(REVISIONS, {}).get(chart_key, 0))}


def _handled(chart_key: str) -> None:
    revisions = dict(st.session_state.get(REVISIONS, {}))
    revisions[chart_key] = revisions.get(chart_key, 0) + 1
    st.session_state[REVISIONS] = revisions


def clicked_points(chart_key: str) -> list[list[Any]]:
    """The custom data of the points of the chart's last selection event, each as a list."""
    event = st.session_state.get(chart_key) or {}
    selection = event.get("selection", {}) if isinstance(event, Mapping) else {}
    out = []
    for point in selection.get("points", []):
        data = point.get("customdata")
        if isinstance(data, Mapping):
            data = [data[k] for k in sorted(data, key=lambda k: int(k))]
        if isinstance(data, Sequence) and not isinstance(data, str):
            out.append(list(data))
    return out


def grid_click(points: list[list[Any]], grid: tuple[int, int]) -> tuple[tuple[int, int] | None, str | None]:
    """``(patch, None)`` for the first clicked point that is a patch of ``grid``; ``(None, note)`` when the
    click came from a chart drawn for another grid (custom data ``[row, col, h, w]``) or names no patch."""
    h, w = grid
    for data in points:
        if len(data) < 2:
            continue
        row, col = int(data[0]), int(data[1])
        drawn = (int(data[2]), int(data[3])) if len(data) >= 4 else grid
        if drawn != grid or not (0 <= row < h and 0 <= col < w):
            return None, (f"A click on patch ({row}, {col}) of a chart drawn for a {drawn[0]}x{drawn[1]} grid "
                          f"was ignored: the current model has {h}x{w} patches. Click again.")
        return (row, col), None
    return None, None


def on_patch_event(component_key: str, grid: tuple[int, int]) -> None:
    """Callback of a patch-panel component (``app.patch_panels``) drawn for the patch grid ``grid``: its click
    event carries ``{"row", "col", "h", "w"}``."""
    result = st.session_state.get(component_key) or {}
    event = result.get("patch") if isinstance(result, Mapping) else None
    if not isinstance(event, Mapping):
        return
    points = [[event.get("row", -1), event.get("col", -1), event.get("h", 0), event.get("w", 0)]]
    scope = current_scope()
    patch_pair, text = grid_click(points, scope.grid if scope is not None else grid)
    if text:
        note(text)
    if patch_pair is not None:
        select_patch(*patch_pair)
        _handled(component_key)


def image_click(chart_key: str) -> None:
    """Callback of a chart whose points carry a test-set index first in their custom data: that test image
    becomes the current one (a click naming an image the current test set lacks is ignored, with a note)."""
    scope = current_scope()
    for data in clicked_points(chart_key):
        if not data:
            continue
        index = int(data[0])
        if scope is not None and scope.images is not None and not 0 <= index < scope.images:
            note(f"A click on test image {index} was ignored: the current test set has {scope.images} images.")
            return
        st.session_state["image_source"] = "test"
        st.session_state[IMAGE_INDEX] = index
        _handled(chart_key)
        return


def patch() -> tuple[int, int]:
    """The selected patch ``(row, col)``."""
    return int(st.session_state[PATCH_ROW]), int(st.session_state[PATCH_COL])


def layer() -> int:
    """The selected layer."""
    return int(st.session_state[LAYER])


def remembered(name: str, key: Hashable, build: Callable[[], T]) -> T:
    """The value built for ``key`` when this session last asked for ``name``, or ``build()`` when the key
    differs (one value per name is kept).

    A chart whose inputs did not change is not rebuilt when something else reruns its page: a patch click
    redraws the attention overlays but reuses the attention matrices of the same layer and head, and the
    browser, sent the same chart again, keeps the one it has drawn.
    """
    store = st.session_state.setdefault(REMEMBERED, {})
    held = store.get(name)
    if held is not None and held[0] == key:
        return cast(T, held[1])
    value = build()
    store[name] = (key, value)
    return value
