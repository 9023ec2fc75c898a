"""MAGMA on a Dask cluster: EM over partitions of the individuals, and prediction of many new individuals.

Needs the optional dependency ``dask[distributed]`` (``pip install magma-pymc[dask]``).

- :class:`DistributedMagma`: ``DistributedMagma(...).fit(ddf, client=client)`` runs the EM of
  :class:`magma_pymc.Magma` with every sum over individuals computed where the data live
  (:mod:`magma_pymc.distributed.em`); the fitted object predicts as an in-process fit.
- :func:`predict_partitions`: predictions for a frame of new individuals, partition by partition.

See the documentation page *Distributed fitting* for when it pays off.
"""

from magma_pymc.distributed.estimator import DistributedMagma
from magma_pymc.distributed.frames import split_by_individual
from magma_pymc.distributed.predictor import predict_partitions

__all__ = ["DistributedMagma", "predict_partitions", "split_by_individual"]
