import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")


def make_long(individuals, ids=None) -> pd.DataFrame:
    """Long DataFrame from a list of (inputs, outputs)."""
    ids = ids if ids is not None else [f"i{k}" for k in range(len(individuals))]
    return pd.DataFrame(
        {
            "ID": np.concatenate([[i] * len(t) for i, (t, _) in zip(ids, individuals)]),
            "Input": np.concatenate([t for t, _ in individuals]),
            "Output": np.concatenate([y for _, y in individuals]),
        }
    )


@pytest.fixture
def small_problem():
    """Four individuals on an uncommon grid with overlapping inputs, seeded."""
    rng = np.random.default_rng(42)
    grid = np.linspace(0, 10, 21)
    individuals = []
    for n in (5, 7, 4, 6):
        t = np.sort(rng.choice(grid, n, replace=False))
        individuals.append((t, np.sin(t) + 0.5 * t + rng.normal(0, 0.3, n)))
    return individuals


@pytest.fixture
def fixture_dir() -> Path:
    """Outputs of MagmaClustR 1.2.1 at fixed HP (see tests/data/magmaclustr/README.md)."""
    return Path(__file__).parent / "data" / "magmaclustr"
