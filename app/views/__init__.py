"""Dashboard pages, one module per view, each registered in :mod:`app.views.registry`.

Importing this package imports every view module, which registers it; the sidebar lists
:func:`list_views`.
"""

from app.views import atlas, attention, features, models, rank, selection  # noqa: E402,F401  (registration)
from app.views.registry import (
    VIEWS,
    ImageContext,
    ImagePageContext,
    PageContext,
    View,
    get_view,
    list_views,
    register_view,
)

__all__ = ["VIEWS", "ImageContext", "ImagePageContext", "PageContext", "View", "get_view", "list_views",
           "register_view"]
