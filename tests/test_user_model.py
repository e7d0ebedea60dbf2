"""A user's own mixture with no edit to the package: ``--model module:Class`` on the CLI (from
the working directory), ``MixtureEM(model=<class, factory or "module:Class">)`` pickled into
``GridSearchCV(n_jobs=2)``'s workers, ``mixem compare`` and ``inference.load`` on its fits, and
the contract's one-line errors."""

from __future__ import annotations

import json
import pickle
import re
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV

from examples.laplace_mixture import LaplaceMixture
from inference import Categorical, Delta, fit, load
from inference.cli import main
from inference.errors import MixemError
from inference.estimator import MixtureEM
from inference.init import kmeans_plusplus
from inference.params import get_params

# what a user writes next to the data: plain Pyro, an Exponential mixture (a family of the
# table, so the fused pass and the family M-step apply) and a factory of it
USER_MODULE = """
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints


class ExpMix(PyroModule):
    def __init__(self, rates, logits=None):
        super().__init__()
        self.rates = PyroParam(rates, constraint=constraints.positive)
        start = torch.zeros(rates.shape[0], dtype=rates.dtype) if logits is None else logits
        self.logits = PyroParam(start)
        self.n_components = rates.shape[0]

    @classmethod
    def from_centres(cls, centres, x):
        return cls(1 / centres.clamp_min(1e-3))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=self.logits))
            pyro.sample("x", dist.Exponential(self.rates[z]).to_event(1), obs=x)


def make(centres, x):
    return ExpMix.from_centres(centres, x)


class NoK(ExpMix):
    def __init__(self, rates):
        super().__init__(rates)
        del self.n_components


class WrongSite(ExpMix):
    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Exponential(self.rates[0]).to_event(1), obs=x)


NOT_A_MODEL = 3
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A working directory holding ``usermix.py`` and ``x.npy``; sys.path and sys.modules
    restored afterwards (the CLI puts the working directory on sys.path)."""
    (tmp_path / "usermix.py").write_text(textwrap.dedent(USER_MODULE))
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.exponential(6.0, (300, 2)), rng.exponential(1.0, (200, 2))])
    np.save(tmp_path / "x.npy", x)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "usermix", raising=False)
    return tmp_path


def _argv(command, model, out, *extra):
    return [
        command, "--model", model, "--k", "2", "--data", "x.npy", "--out", str(out),
        "--quiet", "--max-iter", "40", "--tol", "1e-8", *extra,
    ]  # fmt: skip


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mixem: error: "), err
    return err


def test_cli_fits_a_module_from_the_working_directory_as_python_does(user_dir, capsys):
    assert main(_argv("fit", "usermix:ExpMix", user_dir / "run", "--guide", "categorical")) == 0
    capsys.readouterr()
    summary = json.loads((user_dir / "run" / "summary.json").read_text())
    assert summary["model"] == "usermix:ExpMix"
    import usermix  # importable now: the CLI put the working directory on sys.path

    x = torch.from_numpy(np.load(user_dir / "x.npy"))
    start = kmeans_plusplus(x, 2, torch.Generator().manual_seed(0))
    reference = fit(usermix.ExpMix.from_centres(start, x), x, Categorical(), max_iter=40, tol=1e-8)
    labels = np.load(user_dir / "run" / "labels.npy")
    assert np.array_equal(labels, reference.labels.numpy())
    params = np.load(user_dir / "run" / "params.npz")
    for name, value in get_params(reference.model).items():
        np.testing.assert_allclose(params[name], value.numpy(), rtol=1e-10, atol=0)
    assert summary["elbo"] == pytest.approx(reference.trace[-1].elbo, rel=1e-12)
    # the saved fit loads by re-importing the class, every parameter bit for bit
    loaded = load(user_dir / "run")
    for name, value in get_params(loaded).items():
        assert np.array_equal(value.numpy(), params[name])
    assert main(["predict", "--fit", "run", "--data", "x.npy", "--out", "pred"]) == 0
    assert np.array_equal(np.load(user_dir / "pred" / "labels.npy"), labels)


def test_cli_compare_runs_a_users_model_under_every_guide(user_dir, capsys):
    argv = _argv("compare", "usermix:ExpMix", user_dir / "cmp", "--guides", "delta,categorical")
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    for guide in ("delta", "categorical"):
        assert (user_dir / "cmp" / "guides" / guide / "params.npz").is_file()


@pytest.mark.parametrize(
    "model, match",
    [
        ("nosuchmodule:ExpMix", "cannot import 'nosuchmodule'"),
        ("usermix:Missing", "module 'usermix' has no 'Missing'"),
        ("usermix:NOT_A_MODEL", "neither a class nor a factory"),
        ("usermix:NoK", "has no n_components attribute"),
        ("usermix:WrongSite", "does not follow the contract"),
        ("usermix:", "expected package.module:Class"),
        ("no-such-model", "package.module:Class for your own"),
    ],
)
def test_cli_refuses_what_is_not_a_model_in_one_line(user_dir, capsys, model, match):
    err = _error(capsys, _argv("fit", model, user_dir / "bad", "--guide", "delta"))
    assert match in err
    assert not (user_dir / "bad" / "summary.json").exists()


def test_cli_model_flags_a_users_model_does_not_take_are_refused(user_dir, capsys):
    err = _error(capsys, _argv("fit", "usermix:ExpMix", user_dir / "b", "--covariance", "diag"))
    assert "--covariance does not apply to --model usermix:ExpMix" in err


def test_a_factory_is_a_model_but_its_fit_is_loaded_only_through_a_class(user_dir, capsys):
    assert main(_argv("fit", "usermix:make", user_dir / "f", "--guide", "delta")) == 0
    capsys.readouterr()
    with pytest.raises(MixemError, match="is a factory, not a class"):
        load(user_dir / "f")


IRIS = load_iris().data


@pytest.mark.parametrize(
    "model",
    [LaplaceMixture, "examples.laplace_mixture:LaplaceMixture", LaplaceMixture.from_centres],
)
def test_estimator_takes_a_class_a_reference_or_a_factory_alike(model):
    kwargs = {"guide": "categorical", "n_components": 3, "random_state": 0, "max_iter": 10}
    est = MixtureEM(model=model, **kwargs).fit(IRIS)
    reference = MixtureEM(model=LaplaceMixture, **kwargs).fit(IRIS)
    assert np.array_equal(est.labels_, reference.labels_)
    assert est.lower_bound_ == reference.lower_bound_
    again = pickle.loads(pickle.dumps(est))
    assert np.array_equal(again.predict(IRIS), est.predict(IRIS))
    assert np.all(np.diff(est.elbo_trace_) >= -1e-9 * np.abs(est.elbo_trace_[:-1]))


def test_grid_search_runs_a_users_class_in_two_worker_processes():
    est = MixtureEM(model=LaplaceMixture, guide="categorical", random_state=0, max_iter=5)
    grid = {"n_components": [2, 3]}
    parallel = GridSearchCV(est, grid, n_jobs=2, cv=2).fit(IRIS)
    serial = GridSearchCV(est, grid, n_jobs=1, cv=2).fit(IRIS)
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"], rtol=1e-9
    )
    assert parallel.best_params_ == serial.best_params_


def test_estimator_refuses_a_model_that_breaks_the_contract():
    class Flat(LaplaceMixture):
        def forward(self, x):
            return None  # no sites at all

    with pytest.raises(MixemError, match="does not follow the contract"):
        MixtureEM(model=Flat, n_components=2, max_iter=2).fit(IRIS)
    with pytest.raises(MixemError, match="or a model class or factory, got int"):
        MixtureEM(model=3, n_components=2).fit(IRIS)
    with pytest.raises(MixemError, match="does not take banana as options"):
        MixtureEM(model=LaplaceMixture, n_components=2, model_options={"banana": 1}).fit(IRIS)


def test_gradient_m_step_settings_mean_the_same_on_the_cli_the_estimator_and_fit(user_dir, capsys):
    from inference.mstep_gradient import Gradient

    settings = ["--m-step", "gradient", "--m-step-steps", "7", "--m-step-tol", "1e-6"]
    assert main(_argv("fit", "usermix:ExpMix", user_dir / "g", "--guide", "delta", *settings)) == 0
    capsys.readouterr()
    import usermix

    x = torch.from_numpy(np.load(user_dir / "x.npy"))
    start = usermix.ExpMix.from_centres(kmeans_plusplus(x, 2, torch.Generator().manual_seed(0)), x)
    m_step = Gradient(max_steps=7, tol=1e-6)
    reference = fit(start, x, Delta(), max_iter=40, tol=1e-8, m_step=m_step)
    params = np.load(user_dir / "g" / "params.npz")
    for name, value in get_params(reference.model).items():
        np.testing.assert_allclose(params[name], value.numpy(), rtol=1e-10, atol=0)
    est = MixtureEM(
        model=usermix.ExpMix,
        n_components=2,
        init="k-means++",
        random_state=np.random.RandomState(0),
        max_iter=40,
        tol=1e-8,
        m_step="gradient",
        m_step_options={"max_steps": 7, "tol": 1e-6},
    )
    est.fit(x.numpy())  # its seed drawn from random_state: fit is run from the same start
    seed = int(est.init_seeds_[0])
    start = usermix.ExpMix.from_centres(
        kmeans_plusplus(x, 2, torch.Generator().manual_seed(seed)), x
    )
    reference = fit(start, x, Delta(), max_iter=40, tol=1e-8, m_step=m_step)
    for name, value in get_params(reference.model).items():
        np.testing.assert_allclose(est.params_[name], value.numpy(), rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"m_step": "newton"}, "m_step must be one of"),
        ({"m_step_options": {"max_steps": 3}}, "apply to m_step='gradient', not m_step='auto'"),
        ({"m_step": "gradient", "m_step_options": {"steps": 3}}, "unknown m_step_options steps"),
        ({"m_step": "gradient", "m_step_options": {"max_steps": 0}}, "max_steps must be"),
    ],
)
def test_estimator_m_step_settings_are_checked(kwargs, match):
    with pytest.raises(MixemError, match=match):
        MixtureEM(n_components=2, **kwargs).fit(IRIS)


def test_cli_gradient_settings_need_the_gradient_m_step(user_dir, capsys):
    err = _error(capsys, _argv("fit", "usermix:ExpMix", user_dir / "s", "--m-step-steps", "5"))
    assert "--m-step-steps applies to --m-step gradient, not --m-step auto" in err


def test_readme_grid_search_example_runs(capsys):
    """README's "Your own mixture on the command line ..." Python block, as written."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own mixture on the command line", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    namespace = {"__name__": "readme_user_model"}
    exec(compile(code, "README.md", "exec"), namespace)
    search = namespace["search"]
    assert search.best_params_["n_components"] in (2, 3, 4)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert "n_components" in capsys.readouterr().out
