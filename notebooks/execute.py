"""Execute the example notebooks in place, so that they are committed with their outputs.

``python notebooks/build_notebooks.py --execute`` writes every notebook from its cells and runs it
here, in a fresh ``python3`` kernel of this environment, in smoke mode (``MAGMA_SMOKE=1``: small
problems, a few minutes in all) unless ``--full`` is given. The outputs (figures, tables, printed
results) are what a reader sees on the web and in the documentation site, which renders the
notebooks without executing them; ``tests/test_notebooks.py`` checks that the committed cells
match the builder and that every cell ran without error.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
from nbclient import NotebookClient

CELL_TIMEOUT = 3600  # seconds per cell: the full-size runs fit many models in one cell
SMOKE_VARIABLES = ("CI", "MAGMA_SMOKE")  # either one switches a notebook to smoke mode
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def _mode(smoke: bool):
    """The kernel inherits this process's environment: set (or clear) the smoke switches for its run.

    The repository root goes first on ``PYTHONPATH``: the kernel, started in a scratch folder,
    imports this checkout's ``magma_pymc`` rather than whichever copy is installed.
    """
    saved = {name: os.environ.get(name) for name in (*SMOKE_VARIABLES, "PYTHONPATH")}
    for name in SMOKE_VARIABLES:
        os.environ.pop(name, None)
    if smoke:
        os.environ["MAGMA_SMOKE"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    try:
        yield
    finally:
        for name, value in saved.items():  # as they were
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute(path: Path, *, smoke: bool = True) -> float:
    """Run every cell of the notebook at ``path`` and write it back with its outputs; return the seconds taken.

    Raises
    ------
    RuntimeError
        When a cell raises (the notebook on disk is then left as it was).
    """
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with _mode(smoke), tempfile.TemporaryDirectory() as workdir:  # files a notebook writes stay out of the repo
        NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, startup_timeout=120, record_timing=False,
                       resources={"metadata": {"path": workdir}}).execute()
    seconds = time.perf_counter() - start
    nb.metadata["magma_pymc"] = {"mode": "smoke" if smoke else "full"}
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds
