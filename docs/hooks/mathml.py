r"""MkDocs hook: the math of every page, rendered to MathML when the site is built.

``pymdownx.arithmatex`` (generic mode) leaves ``$...$`` and ``$$...$$`` as
``<span class="arithmatex">\(...\)</span>`` and ``<div class="arithmatex">\[...\]</div>``; this hook
replaces each by the MathML of ``latex2mathml``, which browsers display natively: no JavaScript and
no network, so the site renders offline. A formula ``latex2mathml`` cannot read, or with a command it
does not know, fails the build.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.DOTALL)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.DOTALL)


# latex2mathml keeps a command it does not know as text: no backslash may be left in a text node
_UNKNOWN_COMMAND = re.compile(r">([^<]*\\[^<]*)<")
_CONTROL_SPACE = re.compile(r"(?<!\\)\\[ \t]*\n[ \t]*")  # "\" ending a line is a space, as in TeX
# TeX operator names latex2mathml does not know, written as the \operatorname it does know
_MISSING_OPERATORS = re.compile(r"\\(arg)(?![A-Za-z])")


def _mathml(tex: str, display: str, where: str) -> str:
    try:
        source = _MISSING_OPERATORS.sub(r"\\operatorname{\1}", _CONTROL_SPACE.sub(r"\\ ", html.unescape(tex)))
        mathml = convert(source.strip(), display=display)
    except Exception as err:  # latex2mathml raises several exception types
        raise ValueError(f"{where}: cannot render the formula {tex!r} to MathML: {err!r}") from err
    unknown = _UNKNOWN_COMMAND.findall(mathml)
    if unknown:
        raise ValueError(f"{where}: cannot render the formula {tex!r} to MathML: unknown {unknown}")
    return mathml


def to_mathml(content: str, where: str = "page") -> str:
    """Replace the arithmatex spans and divs of an HTML fragment by MathML."""
    content = _BLOCK.sub(lambda m: f'<div class="math-display">{_mathml(m.group(1), "block", where)}</div>', content)
    return _INLINE.sub(lambda m: _mathml(m.group(1), "inline", where), content)


def on_page_content(html_content: str, page: Any, **kwargs: Any) -> str:
    """Render the math of a page (its Markdown already converted to HTML)."""
    return to_mathml(html_content, page.file.src_uri)


# mkdocs-jupyter adds a loader that fetches MathJax from a CDN for notebook pages; their math is
# already MathML (above), so the loader is dropped and the pages make no request off the site.
_MATHJAX_LOADER = re.compile(r"<script data-mkdocs-jupyter-mathjax=.*?</script>", re.DOTALL)


def on_post_page(output: str, page: Any, **kwargs: Any) -> str:
    """Drop the MathJax loader of a notebook page."""
    return _MATHJAX_LOADER.sub("", output)
