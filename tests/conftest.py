import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import matplotlib  # noqa: E402
from reference import JointGP  # noqa: E402

import magma_pymc as mp  # noqa: E402

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


# Fixed HP shared by the E-step, projected-model and M-step tests.
HP0 = (3.0, 2.0)
COMMON = (1.0, 0.8, 0.25)
DIFFERENT = [(1.0, 0.8, 0.25), (2.0, 1.5, 0.1), (0.5, 0.5, 0.3), (1.5, 1.0, 0.2)]


def hp_dict(individual, ids):
    """The ``hyperparameters=`` mapping of the mean-process HP :data:`HP0` and ``individual`` HP."""
    if isinstance(individual, tuple):
        return {"mean_process": dict(variance=HP0[0], lengthscale=HP0[1]),
                "individual": dict(variance=individual[0], lengthscale=individual[1], noise=individual[2])}
    table = pd.DataFrame(individual, index=ids, columns=["variance", "lengthscale", "noise"])
    return {"mean_process": dict(variance=HP0[0], lengthscale=HP0[1]), "individual": table}


def fixed_model(individuals, common_hp, m0=0.7, **options):
    """A ``method="fixed"`` fit at :data:`HP0` and :data:`COMMON` / :data:`DIFFERENT`, and its dense reference;
    ``options`` go to ``Magma``."""
    ids = [f"i{k}" for k in range(len(individuals))]
    hps = COMMON if common_hp else DIFFERENT[: len(individuals)]
    model = mp.Magma(common_hp=common_hp, prior_mean=m0, **options).fit(
        make_long(individuals, ids), method="fixed", hyperparameters=hp_dict(hps, ids)
    )
    reference = JointGP(individuals, HP0, [COMMON] * len(individuals) if common_hp else hps, m0=m0)
    return model, reference


def fit_fixed(individuals, common_hp, **options):
    """:func:`fixed_model` with the prior mean 0.4 of the prediction tests; ``options`` go to ``Magma``."""
    return fixed_model(individuals, common_hp, m0=0.4, **options)


# A new individual's observed points and the prediction inputs of the prediction tests.
T_PRED = np.array([0.0, 1.3, 4.0, 4.0, 8.8, 11.0])   # unsorted-safe, a duplicate, one outside the range
NEW_T = np.array([6.0, 0.5, 3.5])                    # deliberately unsorted
NEW_Y = np.array([1.6, 1.5, 0.7])


def common_grid_problem(n_individuals=4, seed=3):
    """Individuals sharing 9 inputs on [0, 10], seeded."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 10, 9)
    return [(t, np.cos(t) + rng.normal(0, 0.4, t.size)) for _ in range(n_individuals)]


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
