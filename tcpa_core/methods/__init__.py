"""Prompting methods as a registry: one file per method over :class:`PromptMethod`.

``get_method(name)``, ``list_methods(role=None)`` and ``register_method`` (a class decorator) are the API;
importing this package registers the built-in methods in this order.
"""

from . import none, vpt_shallow, vpt_deep, vfpt, vp, tcpa, r_tcpa, vfpt_tcpa, vp_tcpa  # noqa: F401,I001
from .base import ROLES, PromptMethod, get_method, list_methods, register_method, unregister_method

__all__ = ["ROLES", "PromptMethod", "get_method", "list_methods", "register_method", "unregister_method"]
