"""magma_pymc: MAGMA multi-task Gaussian processes with a common mean process, in PyMC.

Leroy, Latouche, Guedj & Gey, "MAGMA: inference and prediction using multi-task Gaussian
processes with common mean", Machine Learning 111 (2022).
"""

from magma_pymc import datasets, kernels
from magma_pymc.bayes import compare_fits
from magma_pymc.cluster import MagmaClust
from magma_pymc.data import MagmaInputError
from magma_pymc.datasets import simulate, split_observed
from magma_pymc.estimator import Magma
from magma_pymc.exceptions import ConvergenceWarning, MagmaWarning, NumericalWarning, PerformanceWarning
from magma_pymc.files import ModelFileError
from magma_pymc.kernels import Kernel, Matern52, SquaredExponential
from magma_pymc.params import HyperParameters

__version__ = "0.1.0"

__all__ = [
    "Magma",
    "MagmaClust",
    "HyperParameters",
    "Kernel",
    "SquaredExponential",
    "Matern52",
    "MagmaInputError",
    "ConvergenceWarning",
    "NumericalWarning",
    "MagmaWarning",
    "PerformanceWarning",
    "ModelFileError",
    "simulate",
    "split_observed",
    "compare_fits",
    "datasets",
    "kernels",
    "__version__",
]

from magma_pymc import plots  # noqa: E402  (cheap: matplotlib is imported by the plotting functions on first use)

__all__ += ["plots"]
