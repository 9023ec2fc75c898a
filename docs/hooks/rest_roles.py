r"""Griffe extension: the reST markup of the package's docstrings, rewritten as Markdown for mkdocstrings.

The docstrings follow the numpydoc convention, whose math and cross-references are reST
(``:math:`x```, ``.. math::`` blocks, ``:func:`name```). Griffe's numpy parser keeps them as
text, so the API page would show them raw. Before a docstring is parsed this extension rewrites

- ``:math:`x``` as ``$x$`` and a ``.. math::`` block as ``$$ ... $$`` (one per equation; an
  equation with ``&`` or ``\\`` is wrapped in ``aligned``, as Sphinx does), which
  ``pymdownx.arithmatex`` then protects from Markdown and ``docs/hooks/mathml.py`` turns into MathML;
- ``:func:`~pkg.name``` and the other Python roles as inline code (``name`` with ``~``).
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_INLINE_MATH = re.compile(r":math:`([^`]+)`")
_PY_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^([ \t]*)\.\. math::[ \t]*(.*)\n")  # the formula may follow on the line


def _inline_math(match: re.Match) -> str:
    tex = " ".join(match.group(1).split())  # a role may span lines
    return f"${tex}$"


def _py_role(match: re.Match) -> str:
    short, target = match.groups()
    target = target.split("<")[-1].rstrip(">") if "<" in target else target  # :func:`title <target>`
    name = target.rsplit(".", 1)[-1] if short else target
    return f"`{name}`"


def _equations(body: str) -> list[str]:
    r"""Equations of a math block: paragraphs separated by blank lines, aligned when they have & or \\."""
    out = []
    for para in re.split(r"\n[ \t]*\n", body.strip("\n")):
        tex = textwrap.dedent(para).strip()
        if not tex:
            continue
        if "&" in tex or "\\\\" in tex:
            tex = "\\begin{aligned}\n" + tex + "\n\\end{aligned}"
        out.append(tex)
    return out


def _math_blocks(text: str) -> str:
    """Replace every ``.. math::`` directive (and its indented body) by ``$$`` blocks."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    k = 0
    while k < len(lines):
        match = _MATH_DIRECTIVE.match(lines[k] if lines[k].endswith("\n") else lines[k] + "\n")
        if not match:
            out.append(lines[k])
            k += 1
            continue
        indent = match.group(1)
        body: list[str] = [match.group(2) + "\n"] if match.group(2).strip() else []
        k += 1
        while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > len(indent)):
            body.append(lines[k])
            k += 1
        trailing = len(body) - len("".join(body).rstrip("\n ").splitlines(keepends=True))
        for tex in _equations("".join(body)):
            out.append(f"{indent}$$\n")
            out.extend(f"{indent}{line}\n" for line in tex.splitlines())
            out.append(f"{indent}$$\n\n")
        out.extend("\n" * max(trailing, 0))
    return "".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def rest_to_markdown(text: str) -> str:
    """The reST math and Python roles of a docstring, as Markdown (see the module docstring)."""
    text = _math_blocks(text)
    text = _INLINE_MATH.sub(_inline_math, text)
    return _PY_ROLE.sub(_py_role, text)


class RestRoles(griffe.Extension):
    """Rewrite each docstring's reST roles and math directives as Markdown before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object as griffe loads it."""
        if obj.docstring is not None:
            obj.docstring.value = rest_to_markdown(obj.docstring.value)
