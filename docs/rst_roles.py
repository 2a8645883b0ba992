"""A griffe extension for the API reference: Sphinx roles in docstrings as Markdown code.

The docstrings name other objects the Sphinx way (``:func:`~vlmsae.metrics.top_images```);
Markdown shows such a role as literal text. This turns each into inline code, keeping the
last component where the target starts with ``~`` (as Sphinx does).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")


def _code(m: re.Match) -> str:
    tilde, target = m.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class RstRoles(griffe.Extension):
    """Rewrites the roles of every docstring once, when its object is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
