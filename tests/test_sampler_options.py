"""Options of fit(method="nuts") for pm.sample (magma_pymc.sampler_options)."""

import pytest

from magma_pymc.sampler_options import accepted_options, available_cpus, sample_options


def test_defaults_run_chains_in_parallel_with_a_progress_bar():
    kwargs = sample_options({"chains": 2})
    assert kwargs["cores"] == min(2, available_cpus()) and kwargs["progressbar"] is True
    assert sample_options({"chains": 64})["cores"] == available_cpus()
    assert sample_options({"chains": 2, "cores": 1, "progressbar": False})["cores"] == 1


def test_every_pm_sample_and_nuts_option_passes_through():
    options = dict(cores=2, target_accept=0.95, nuts_sampler="nutpie", init="jitter+adapt_full", max_treedepth=8,
                   step_scale=0.3, blas_cores=1, nuts_sampler_kwargs={"low_rank_modified_mass_matrix": True})
    assert {"cores", "init", "max_treedepth", "step_scale", "blas_cores", "idata_kwargs"} <= accepted_options()
    kwargs = sample_options(options)
    assert all(kwargs[k] == v for k, v in options.items())


def test_unknown_or_reserved_options_are_rejected_naming_the_public_call():
    with pytest.raises(TypeError, match=r"Magma.fit\(method='nuts'\) got unexpected keyword argument\(s\) 'coress'"):
        sample_options({"coress": 2})
    with pytest.raises(TypeError, match="model cannot be set"):
        sample_options({"model": None})


def test_auto_sampler_is_nutpie_where_installed_else_pymc(monkeypatch):
    import importlib.util

    from magma_pymc.sampler_options import resolve_nuts_sampler

    assert resolve_nuts_sampler("pymc") == "pymc" and resolve_nuts_sampler("numpyro") == "numpyro"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nutpie" else real(name, *a))
    assert resolve_nuts_sampler("auto") == "pymc"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "nutpie" else real(name, *a))
    assert resolve_nuts_sampler("auto") == "nutpie"


def test_nutpie_uses_a_low_rank_mass_matrix_with_the_population_layer_unless_told_otherwise():
    from magma_pymc.sampler_options import LOW_RANK_MASS_MATRIX, with_mass_matrix_default

    nutpie = {"nuts_sampler": "nutpie", "chains": 2}
    assert with_mass_matrix_default(nutpie, True)["nuts_sampler_kwargs"] == {LOW_RANK_MASS_MATRIX: True}
    assert "nuts_sampler_kwargs" not in nutpie  # the caller's options are not modified
    mine = {**nutpie, "nuts_sampler_kwargs": {LOW_RANK_MASS_MATRIX: False, "target_accept": 0.9}}
    assert with_mass_matrix_default(mine, True)["nuts_sampler_kwargs"] == {LOW_RANK_MASS_MATRIX: False,
                                                                          "target_accept": 0.9}
    assert "nuts_sampler_kwargs" not in with_mass_matrix_default(nutpie, False)  # common HP: no population layer
    assert "nuts_sampler_kwargs" not in with_mass_matrix_default({"nuts_sampler": "pymc"}, True)
