"""A Sphinx extension: the claims' anchors on the Claims page resolve as link targets.

Prose names a claim with a markdown link to its row on the Claims page,
``[claim rome.counterfact.ES.ROME](../claims.ipynb#claim-rome-counterfact-es-rome)``
(``factlens.evidence.claims.anchor``). The row's anchor is an ``<a id="claim-...">`` in the
page's table, an HTML output of a code cell, which MyST does not know: it resolves a link
``page#target`` only against the page's heading slugs, and warns otherwise (an error in the
strict build). This extension reads every ``id="claim-..."`` of a page's HTML outputs when the
page is read and adds it to the page's slugs, so the link resolves to the row, and a link to a
claim that no chapter registered still fails the strict build.

Enabled in ``_config.yml`` (``sphinx: extra_extensions``).
"""

from __future__ import annotations

import re
from typing import Any

ANCHOR = re.compile(r"""<a\s[^>]*\bid=["'](claim-[a-z0-9-]+)["'][^>]*>(.*?)</a>""", re.S)


def claim_anchors(html: str) -> dict[str, str]:
    """``{anchor id: the link's text}`` of every claim anchor in an HTML fragment."""
    return {m.group(1): re.sub(r"<[^>]+>", "", m.group(2)).strip() for m in ANCHOR.finditer(html)}


def _register(app: Any, doctree: Any) -> None:
    from docutils import nodes

    env = app.env
    found: dict[str, str] = {}
    for raw in doctree.findall(nodes.raw):
        if "html" in raw.get("format", "").split():
            found.update(claim_anchors(raw.astext()))
    if found:
        slugs = env.metadata[env.docname].setdefault("myst_slugs", {})
        for anchor, text in found.items():
            slugs.setdefault(anchor, (None, anchor, text))


def setup(app: Any) -> dict[str, Any]:
    app.connect("doctree-read", _register)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
