"""A scikit-learn estimator around the variational EM loop: ``MixtureEM``.

    MixtureEM(model="restricted-gmm", guide="delta", n_components=8).fit(X).labels_

is K-means (Lloyd's algorithm from greedy k-means++), and ``guide="categorical"`` classical EM;
any model in ``models.MODELS`` and any family ``inference.guides.parse_guide`` knows works. Input
is checked and converted as scikit-learn does (integers and float16 to float64, float32 kept);
bad input raises ``MixemError``, a ``ValueError``, with scikit-learn's message where it has one.
``bic``, ``aic`` and ``icl`` score a fit for choosing K (``inference.selection``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from inference.checks import check_support
from inference.em import e_step, fit
from inference.enumerate import iter_log_joint
from inference.errors import MixemError
from inference.guides import GuideFamily, parse_guide
from inference.init import kmeans_plusplus, random_points
from inference.params import get_params

_INITS = ("k-means++", "kmeans++", "random")
_DTYPES = {"float32": np.float32, "float64": np.float64}


def _model_class(name: str) -> Any:
    from models import MODELS

    if name not in MODELS:
        raise MixemError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _as_dtype(dtype: Any) -> Any:
    """The numpy dtype(s) ``validate_data`` converts to: float32/float64 kept, rest float64."""
    if dtype is None:
        return [np.float64, np.float32]
    try:
        resolved = np.dtype(dtype)
    except TypeError as err:
        raise MixemError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}") from err
    if resolved.name not in _DTYPES:
        raise MixemError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[resolved.name]


class MixtureEM(ClusterMixin, BaseEstimator):
    """Mixture model fitted by variational EM with q restricted to a guide family.

    Args:
        model: a name in ``models.MODELS`` (e.g. ``"restricted-gmm"``).
        guide: a family spec for ``parse_guide`` (e.g. ``"delta"``, ``"categorical"``), or a
            ``GuideFamily`` object.
        n_components: K.
        init: ``"k-means++"`` (greedy, as scikit-learn), ``"random"`` (K distinct rows), or an
            array (K, D) of starting centres.
        max_iter: maximum M-steps. tol: stopping tolerance (see ``inference.em.fit``).
        random_state: seed of the initialisation (int, RandomState or None).
        dtype: computation dtype; None keeps float32 and converts anything else to float64.
        chunk_size: rows per enumerated E-step chunk (memory is chunk_size x K).
        model_options: keywords of the model's ``from_centres``, e.g. ``{"covariance_type":
            "diag"}`` for ``"gmm"``.

    Attributes (after ``fit``):
        model_: the fitted Pyro model. guide_: the guide family.
        labels_: (N,) int64 labels of the training data, from an E-step under the final params.
        cluster_centers_: (K, D) the model's ``locs``, for models that have them.
        params_: every parameter of the model as a numpy array.
        n_iter_: M-steps done. converged_: stopped by a criterion, not ``max_iter``.
        stop_reason_: which criterion.
        elbo_trace_, log_evidence_trace_: (n_iter_ + 1,) one entry per E-step.
        lower_bound_: the final ELBO. trace_: the ``TraceRecord`` list.
        n_features_in_: D.
    """

    def __init__(
        self,
        model: str = "restricted-gmm",
        guide: str | GuideFamily = "delta",
        n_components: int = 8,
        init: str | Any = "k-means++",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: Any = None,
        dtype: Any = None,
        chunk_size: int = 4096,
        model_options: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.guide = guide
        self.n_components = n_components
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.model_options = model_options

    # -- input ------------------------------------------------------------------------------

    def _validate(self, X: Any, reset: bool) -> Tensor:
        """(N, D) tensor of ``X``, checked by scikit-learn; ``reset`` on fit only."""
        dtype = _as_dtype(self.dtype) if reset else self._np_dtype
        try:
            array = validate_data(self, X, dtype=dtype, reset=reset)
        except ValueError as err:  # the same message, as the package's error type
            raise MixemError(str(err)) from err
        x = torch.tensor(array)  # a copy: read-only or memory-mapped input stays untouched
        if not reset:  # the support checks fit made (binary, counts, unit rows ...), as fit
            check_support(self.model_, x, int(self.chunk_size))
        return x

    def _check_settings(self, n: int) -> None:
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise MixemError(f"n_components must be a positive integer, got {k!r}")
        if k > n:  # "n_samples=..." is the wording scikit-learn's checks look for
            raise MixemError(f"n_components={k} exceeds n_samples={n}; use n_components <= {n}")
        for name in ("max_iter", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise MixemError(f"{name} must be a non-negative integer, got {value!r}")
        if self.chunk_size < 1:
            raise MixemError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")
        tol = self.tol
        if isinstance(tol, bool | np.bool_) or not isinstance(tol, numbers.Real):
            raise MixemError(f"tol must be a finite number >= 0, got {tol!r}")
        if not 0 <= float(tol) < float("inf"):
            raise MixemError(f"tol must be a finite number >= 0, got {tol!r}")
        if not isinstance(self.model, str):
            raise MixemError(
                f"model must be a name in models.MODELS (e.g. 'restricted-gmm'), got "
                f"{type(self.model).__name__}"
            )
        if self.model_options is not None and not isinstance(self.model_options, dict):
            raise MixemError(
                f"model_options must be a dict of the model's options or None, got "
                f"{type(self.model_options).__name__}"
            )
        if isinstance(self.guide, type):
            raise MixemError(
                f"guide must be a spec string or a guide family instance, got the class "
                f"{self.guide.__name__}; use {self.guide.__name__}(...)"
            )
        try:
            check_random_state(self.random_state)
        except ValueError as err:
            raise MixemError(
                f"random_state must be None, an integer in 0..2**32 - 1 or a numpy "
                f"RandomState, got {self.random_state!r}"
            ) from err

    def _initial_centres(self, x: Tensor, seed: int) -> Tensor:
        """(K, D) starting centres from ``init``; ``seed`` drives the random ones."""
        k = int(self.n_components)
        if isinstance(self.init, str):
            if self.init not in _INITS:
                raise MixemError(
                    f"init must be 'k-means++', 'random' or an array (K, D), got {self.init!r}"
                )
            generator = torch.Generator(device=x.device).manual_seed(seed)
            if self.init == "random":
                return random_points(x, k, generator)
            return kmeans_plusplus(x, k, generator)
        try:
            centres = torch.tensor(np.asarray(self.init, dtype=np.float64), dtype=x.dtype)
        except (TypeError, ValueError) as err:
            raise MixemError(f"init must be an array of numbers (K, D): {err}") from err
        if tuple(centres.shape) != (k, x.shape[1]):
            raise MixemError(
                f"init has shape {tuple(centres.shape)}, expected (n_components, n_features) "
                f"= ({k}, {x.shape[1]})"
            )
        if not bool(torch.isfinite(centres).all()):
            raise MixemError("init contains NaN or inf")
        return centres

    def _guide_family(self, seed: int) -> GuideFamily:
        if isinstance(self.guide, str):  # the seed matters only to sampling families
            return parse_guide(self.guide, int(self.n_components), seed=seed)
        if not callable(getattr(self.guide, "e_step", None)):
            raise MixemError(f"guide must be a spec string or a guide family, got {self.guide!r}")
        return self.guide

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> MixtureEM:
        """Fit on ``X`` (N, D); ``y`` is ignored."""
        x = self._validate(X, reset=True)
        self._check_settings(x.shape[0])
        model_class = _model_class(self.model)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        guide = self._guide_family(seed)
        options = dict(self.model_options or {})
        try:
            model = model_class.from_centres(self._initial_centres(x, seed), x, **options)
        except TypeError as err:  # an option the model does not take
            raise MixemError(f"model {self.model!r} does not take {options}: {err}") from err
        result = fit(
            model,
            x,
            guide,
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            chunk_size=int(self.chunk_size),
        )
        self._store(result, guide, x.dtype)
        return self

    def _store(self, result: Any, guide: GuideFamily, dtype: torch.dtype) -> None:
        self.model_ = result.model
        self.guide_ = guide
        self._np_dtype = _DTYPES[str(dtype).removeprefix("torch.")]
        self.labels_ = result.labels.cpu().numpy().astype(np.int64)
        self.params_ = {k: v.cpu().numpy() for k, v in get_params(result.model).items()}
        if "locs" in self.params_:
            self.cluster_centers_ = self.params_["locs"]
        self.trace_ = list(result.trace)
        self.elbo_trace_ = np.array([r.elbo for r in result.trace])
        self.log_evidence_trace_ = np.array([r.log_evidence for r in result.trace])
        self.lower_bound_ = float(self.elbo_trace_[-1])
        self.n_iter_ = int(result.n_iter)
        self.converged_ = bool(result.converged)
        self.stop_reason_ = result.stop_reason

    def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> np.ndarray:
        """``fit(X).labels_``: (N,) int64."""
        return self.fit(X).labels_

    # -- prediction -------------------------------------------------------------------------

    def _per_row(self, X: Any, reduce: Callable[[Tensor], Tensor]) -> np.ndarray:
        """``reduce`` applied to each chunk's (n, K) log-joint table as it comes, concatenated:
        only one chunk's table is alive at a time."""
        check_is_fitted(self)
        x = self._validate(X, reset=False)
        chunks = iter_log_joint(self.model_, x, int(self.chunk_size))
        return torch.cat([reduce(table) for _, table in chunks]).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """(N,) int64: the label the fitted guide family gives each row of ``X`` (N, D) (for
        ``"sampled"`` a fresh draw; every other family gives the most probable component)."""
        check_is_fitted(self)
        x = self._validate(X, reset=False)
        est = e_step(self.model_, self.guide_, x, int(self.chunk_size))
        return est.labels.cpu().numpy().astype(np.int64)

    def predict_proba(self, X: Any) -> np.ndarray:
        """(N, K) exact posterior p(z = c | x, theta) under the fitted model, as
        ``GaussianMixture.predict_proba`` (a Delta guide's own q would be one-hot)."""
        return self._per_row(X, lambda table: table.softmax(dim=1))

    def score_samples(self, X: Any) -> np.ndarray:
        """(N,) log p(x_i | theta): the log evidence of each row of ``X`` (N, D)."""
        return self._per_row(X, lambda table: table.logsumexp(dim=1))

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log evidence per row of ``X`` (as ``GaussianMixture.score``); ``y`` is ignored."""
        return float(self.score_samples(X).mean())

    # -- model selection --------------------------------------------------------------------

    def _criteria(self, X: Any) -> dict[str, float]:
        from inference.selection import criteria, evidence_terms, n_parameters

        check_is_fitted(self)
        terms = evidence_terms(self.model_, self._validate(X, reset=False), int(self.chunk_size))
        return criteria(terms, n_parameters(self.model_), bool(self.guide_.hard))

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (N, D), as ``GaussianMixture.bic``:
        -2 log p(X | theta) + n_parameters log N, with the exact log evidence (lower is
        better; ``inference.selection.n_parameters`` counts the parameters)."""
        return self._criteria(X)["bic"]

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (N, D), as ``GaussianMixture.aic``:
        -2 log p(X | theta) + 2 n_parameters (lower is better)."""
        return self._criteria(X)["aic"]

    def icl(self, X: Any) -> float:
        """Integrated completed likelihood (Biernacki et al. 2000) on ``X`` (N, D): ``bic`` +
        2 sum_i H(p(z_i | x_i, theta)) for a soft guide; for a hard one (``delta``) the
        classification likelihood log p(X, z_hat | theta) at the MAP labels replaces the
        evidence: -2 log p(X, z_hat | theta) + n_parameters log N (lower is better)."""
        return self._criteria(X)["icl"]
