"""The documentation site (mkdocs.yml, docs/) builds without warnings and documents the API."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"

    for page in ("index.html", "user_guide/index.html", "theory/index.html", "api/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("magma_pymc.Magma", "predict", "hyperposterior", "HyperParameters", "SquaredExponential",
                 "as_training_data", "simulate", "plot_prediction", "fit_nuts", "SingleGP", "save_result",
                 "NumericalWarning"):
        assert name in api, f"{name!r} missing from the API reference page"
