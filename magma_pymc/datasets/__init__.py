"""Data sets for MAGMA: the paper's simulation scheme and bundled real data.

* :func:`simulate` / :class:`Simulation` -- synthetic data from the MAGMA generative
  model (Leroy et al., 2022, section 5), with the ground truth;
* :func:`split_observed` -- per-individual split into observed / forecast points;
* :func:`load_weight`, :func:`load_swimmers`, :func:`load_ecg5000`,
  :func:`load_dodgerloop` -- real data sets in long format (``ID``, ``Input``,
  ``Output``), read offline from files shipped with the package (sources and licences
  in ``data/README.md``).
"""

from .paper import PaperDataSet, load_paper_results, load_paper_simulations, paper_data_set
from .real import load_dodgerloop, load_ecg5000, load_swimmers, load_weight
from .simulate import Simulation, se_kernel, simulate, split_observed

__all__ = [
    "PaperDataSet",
    "Simulation",
    "load_dodgerloop",
    "load_ecg5000",
    "load_paper_results",
    "load_paper_simulations",
    "load_swimmers",
    "load_weight",
    "paper_data_set",
    "se_kernel",
    "simulate",
    "split_observed",
]
