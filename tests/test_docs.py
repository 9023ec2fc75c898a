"""The documentation site (mkdocs.yml, docs/) builds without warnings, documents the API and renders its math."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

from mathml import to_mathml  # noqa: E402
from rest_roles import rest_to_markdown  # noqa: E402

# reST markup that griffe's numpy parser leaves as text: none may reach a page.
RAW_REST = re.compile(r":(?:math|func|meth|class|mod|attr|data|obj|exc):`|\.\. math::")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site


def test_docs_build_strict(site):
    for page in ("index.html", "user_guide/index.html", "theory/index.html", "api/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("magma_pymc.Magma", "predict", "hyperposterior", "HyperParameters", "SquaredExponential",
                 "as_training_data", "simulate", "plot_prediction", "fit_nuts", "SingleGP", "save_result",
                 "NumericalWarning"):
        assert name in api, f"{name!r} missing from the API reference page"


def test_notebooks_rendered_with_figures(site):
    """Each notebook is a page that shows the figures of its committed outputs, with its math as MathML."""
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = site / "notebooks" / path.stem / "index.html"
        assert page.is_file(), f"{path.name} is not a page of the site (nav in mkdocs.yml)"
        html = page.read_text(encoding="utf-8")
        nb = nbformat.read(path, as_version=4)
        outputs = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs]
        figures = sum("image/png" in out.get("data", {}) for out in outputs)
        assert figures and html.count("data:image/png;base64,") >= figures, path.name
        formulas = sum(len(re.findall(r"\$[^$]+\$", c.source)) for c in nb.cells if c.cell_type == "markdown")
        assert html.count("<math") >= formulas, path.name


def test_gallery_shows_every_plot(site):
    """docs/gallery.md shows one committed figure per plotting function of magma_pymc.plots."""
    from magma_pymc import plots

    page = (ROOT / "docs" / "gallery.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[(\w+)\]\((gallery/[\w.]+)\)", page)
    assert sorted(name for name, _ in images) == sorted(plots.__all__)
    for _, image in images:
        data = (site / image).read_bytes()  # copied into the site, so the page finds it
        assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:4] == b"GIF8", image
    assert (site / "gallery" / "index.html").is_file()


def test_site_needs_no_network(site):
    """No page loads a script from another site: the documentation, math included, works offline.

    (The one remote stylesheet is the icon font of the animation's buttons in the quickstart's
    output, written by matplotlib's ``to_jshtml``; the animation plays without it.)
    """
    remote = re.compile(r"""<script[^>]+src=["']https?://""")
    pages = {str(page.relative_to(site)): remote.findall(page.read_text(encoding="utf-8"))
             for page in site.rglob("*.html")}
    assert not {k: v for k, v in pages.items() if v}


def test_docstring_math_rendered(site):
    """No reST role or math directive is left raw on any page; the docstrings' math is MathML."""
    raw = {
        str(page.relative_to(site)): len(RAW_REST.findall(page.read_text(encoding="utf-8")))
        for page in site.rglob("*.html")
    }
    assert not {k: v for k, v in raw.items() if v}, f"raw reST markup left in the built pages: {raw}"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' not in api, "math left for a JavaScript renderer"
    # the source docstrings of the documented modules hold dozens of formulas; each must be a <math> element
    assert api.count("<math") >= 50
    # one formula checked element by element: mu_0 of magma_pymc.plots.animate_prediction
    assert "<msub><mi>&#x003BC;</mi><mn>0</mn></msub>" in api


def test_rest_to_markdown_roles_and_blocks():
    doc = (
        "Mean :math:`\\mu_0(t)\n    + a` of :func:`~magma_pymc.plots.plot_data` and :class:`numpy.ndarray`.\n\n"
        "    .. math::\n\n        a &= b \\\\\n        c &= d\n\n        e = f\n\n    after\n"
        ".. math:: k(x) = v\n"
    )
    out = rest_to_markdown(doc)
    assert "$\\mu_0(t) + a$" in out and "`plot_data`" in out and "`numpy.ndarray`" in out
    blocks = re.findall(r"^ *\$\$\n(.*?)^ *\$\$$", out, flags=re.S | re.M)
    assert [b.split() for b in blocks] == [
        ["\\begin{aligned}", "a", "&=", "b", "\\\\", "c", "&=", "d", "\\end{aligned}"], ["e", "=", "f"],
        ["k(x)", "=", "v"],
    ]
    assert "    after" in out and ".. math::" not in out


def test_mathml_hook_converts_and_fails_loudly():
    page = '<p><span class="arithmatex">\\(x_1 &lt; y\\)</span></p><div class="arithmatex">\\[\\frac{a}{b}\\]</div>'
    out = to_mathml(page)
    assert "arithmatex" not in out and out.count("<math") == 2
    assert "<msub><mi>x</mi><mn>1</mn></msub><mo>&#x0003C;</mo><mi>y</mi>" in out
    assert '<div class="math-display"><math' in out and "<mfrac>" in out
    spaced = to_mathml('<div class="arithmatex">\\[a,\\\n    b\\]</div>')  # TeX: "\\" ending a line is a space
    assert "\\" not in spaced and "<mtext>&#x000A0;</mtext><mi>b</mi>" in spaced
    operator = to_mathml('<span class="arithmatex">\\(\\arg\\max f\\)</span>')  # \arg: an operator name
    assert "<mo>arg</mo><mo>max</mo>" in operator
    for bad in ("a^", "\\left( a", "\\notacommand x"):  # malformed, unbalanced, unknown to latex2mathml
        with pytest.raises(ValueError, match="cannot render"):
            to_mathml(f'<span class="arithmatex">\\({bad}\\)</span>')
