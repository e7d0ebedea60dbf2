"""A scikit-learn estimator around the variational EM loop: ``MixtureEM``.

    MixtureEM(model="restricted-gmm", guide="delta", n_components=8).fit(X).labels_

is K-means (Lloyd's algorithm from greedy k-means++), and ``guide="categorical"`` classical EM;
any model in ``models.MODELS`` or a user's (``inference.user_model``) and any family
``inference.guides.parse_guide`` knows works. Input
is checked and converted as scikit-learn does (integers and float16 to float64, float32 kept);
bad input raises ``MixemError``, a ``ValueError``, with scikit-learn's message where it has one.
``bic``, ``aic`` and ``icl`` score a fit for choosing K (``inference.selection``). The checks
and starts are in ``inference.estimator_init``, the fitted attributes (scikit-learn's names:
``means_``, ``weights_``, ``covariances_``, ``precisions_``, ``inertia_``, ``lower_bound_``
per sample, ``n_iter_`` counted as scikit-learn counts) and ``sample`` in
``inference.estimator_attributes``, the ``n_init`` restarts in ``inference.restarts``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from inference import estimator_init as setup
from inference.checks import check_support
from inference.em import FitResult, e_step, fit
from inference.enumerate import iter_log_joint
from inference.errors import MixemError
from inference.estimator_attributes import sample, store
from inference.guides import GuideFamily
from inference.restarts import best_of
from inference.trace import TraceRecord


class MixtureEM(ClusterMixin, BaseEstimator):
    """Mixture model fitted by variational EM with q restricted to a guide family.

    Args:
        model: a name in ``models.MODELS`` (e.g. ``"restricted-gmm"``), a user's
            ``"package.module:Class"``, or the class or factory itself (``from_centres(centres
            (K, D), x (N, D), **model_options)`` or ``factory(centres, x, **model_options)``;
            ``inference.user_model``), checked against the model contract at ``fit``. A class
            or a module-level function pickles by reference, so ``GridSearchCV(n_jobs=2)``
            runs it in its workers.
        guide: a family spec for ``parse_guide`` (e.g. ``"delta"``, ``"categorical"``), or a
            ``GuideFamily`` object.
        n_components: K.
        init: ``"auto"`` (``"kmeans"`` for ``gmm``, ``"k-means++"`` otherwise), ``"kmeans"``
            (GaussianMixture's ``init_params="kmeans"``: a K-means fit's hard labels give the
            weights, means and covariances; other models start at its centres),
            ``"k-means++"`` (greedy, as scikit-learn; for ``gmm`` every covariance the data's),
            ``"random"`` (K distinct rows), or an array (K, D) of starting centres.
        max_iter: maximum M-steps. tol: stopping tolerance (see ``inference.em.fit``).
        random_state: seed of the initialisation (int, RandomState or None).
        n_init: starts (seeds drawn from ``random_state``); the best final ELBO is kept.
        verbose: 0 silent; 1 a line per start; 2 also a line per iteration (stdout).
        dtype: computation dtype; None keeps float32 and converts anything else to float64.
        chunk_size: rows per enumerated E-step chunk (memory is chunk_size x K).
        model_options: keywords of the model's ``from_centres``, e.g. ``{"covariance_type":
            "diag"}`` for ``"gmm"``.
        m_step: "auto" (the first that applies), "closed", "family" or "gradient" (any model:
            L-BFGS on E_q[log p(X, Z | theta)], ``inference.mstep_gradient``).
        m_step_options: the gradient M-step's settings, a dict of ``Gradient``'s fields
            (``max_steps``, ``tol``, ``line_search``, ``lr``, ``warm_start``); only with
            ``m_step="gradient"``.

    Attributes (after ``fit``; ``inference.estimator_attributes`` says which model has which):
        model_: the fitted Pyro model. guide_: the guide family.
        labels_: (N,) int64 labels of the training data, from an E-step under the final params.
        cluster_centers_: (K, D) the model's ``locs``, for models that have them.
        means_, weights_, covariances_, precisions_, precisions_cholesky_: as GaussianMixture's.
        inertia_: hard guides: sum of squared distances to the assigned mean (KMeans's).
        params_: every parameter of the model as a numpy array.
        n_iter_: iterations as scikit-learn counts them for the same run; n_m_steps_: the
            M-steps done. converged_: stopped by a criterion, not ``max_iter``.
        stop_reason_: which criterion.
        elbo_trace_, log_evidence_trace_: (n_m_steps_ + 1,) one entry per E-step (totals).
        elbo_: the final ELBO (total). lower_bound_: ``elbo_`` per sample (GaussianMixture's);
        lower_bounds_: ``elbo_trace_`` per sample. trace_: the ``TraceRecord`` list.
        init_seeds_, init_elbos_: (n_init,) each start's seed and final ELBO (total).
        n_features_in_: D.
    """

    def __init__(
        self,
        model: str | Any = "restricted-gmm",
        guide: str | GuideFamily = "delta",
        n_components: int = 8,
        init: str | Any = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: Any = None,
        n_init: int = 1,
        verbose: int = 0,
        dtype: Any = None,
        chunk_size: int = 4096,
        model_options: dict[str, Any] | None = None,
        m_step: str = "auto",
        m_step_options: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.guide = guide
        self.n_components = n_components
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_init = n_init
        self.verbose = verbose
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.model_options = model_options
        self.m_step = m_step
        self.m_step_options = m_step_options

    # -- input ------------------------------------------------------------------------------

    def _validate(self, X: Any, reset: bool) -> Tensor:
        """(N, D) tensor of ``X``, checked by scikit-learn; ``reset`` on fit only."""
        dtype = setup.as_dtype(self.dtype) if reset else self._np_dtype
        try:
            array = validate_data(self, X, dtype=dtype, reset=reset)
        except ValueError as err:  # the same message, as the package's error type
            raise MixemError(str(err)) from err
        x = torch.tensor(array)  # a copy: read-only or memory-mapped input stays untouched
        if not reset:  # the support checks fit made (binary, counts, unit rows ...), as fit
            check_support(self.model_, x, int(self.chunk_size))
        return x

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> MixtureEM:
        """Fit on ``X`` (N, D) from ``n_init`` starts, keep the best; ``y`` is ignored."""
        x = self._validate(X, reset=True)
        setup.check_settings(self, x.shape[0])
        setup.model_class(self.model)
        setup.check_init(self.init)
        m_step = setup.m_step(self.m_step, self.m_step_options)
        seeds = setup.start_seeds(self.random_state, int(self.n_init))
        guides: dict[int, GuideFamily] = {}

        def one_start(seed: int) -> FitResult:
            index = len(guides)  # the start's number, for verbose
            guides[seed] = setup.guide_family(self.guide, int(self.n_components), seed)
            if self.verbose:
                print(f"Initialization {index} (seed {seed})")
            result = fit(
                setup.initial_model(self, x, seed),
                x,
                guides[seed],
                max_iter=int(self.max_iter),
                tol=float(self.tol),
                chunk_size=int(self.chunk_size),
                m_step=m_step,
                callback=self._progress(x.shape[0]) if int(self.verbose) >= 2 else None,
            )
            if self.verbose:
                print(
                    f"Initialization {index}: {result.stop_reason} after "
                    f"{result.n_iter} M-steps, lower bound {result.trace[-1].elbo / len(x):.6g}"
                )
            return result

        result, seed, starts = best_of(seeds, one_start)
        self.guide_ = guides[seed]
        self.model_ = result.model
        self._np_dtype = setup.DTYPES[str(x.dtype).removeprefix("torch.")]
        store(self, result, x, bool(self.guide_.hard))
        self.init_seeds_ = np.array([s.seed for s in starts], dtype=np.int64)
        self.init_elbos_ = np.array([s.elbo for s in starts])
        return self

    @staticmethod
    def _progress(n: int) -> Callable[[TraceRecord], None]:
        last: list[float] = []

        def show(record: TraceRecord) -> None:
            change = record.elbo / n - last[-1] if last else float("inf")
            last.append(record.elbo / n)
            print(
                f"  Iteration {record.iteration}: lower bound {last[-1]:.6g}, change {change:.3g}"
            )

        return show

    def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> np.ndarray:
        """``fit(X).labels_``: (N,) int64."""
        return self.fit(X).labels_

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(X (n_samples, D), y (n_samples,)) drawn from the fitted mixture, grouped by
        component as ``GaussianMixture.sample`` does; seeded by ``random_state``."""
        check_is_fitted(self)
        return sample(self, n_samples)

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

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """(N, K) log p(z = c | x, theta), as ``GaussianMixture.predict_log_proba``."""
        return self._per_row(X, lambda table: table.log_softmax(dim=1))

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
