"""``HMMEM``: the HMM fit with hmmlearn's names (``fit(X, lengths)``, ``predict``, ``score``...).

Default initialisation (the letters of ``init_params``; the others are read from the attributes
the user set, in hmmlearn's shapes): s, t: uniform ``startprob_`` and ``transmat_``; the
emission from K rows of X picked by k-means++ (``inference.init``) seeded with
``random_state`` (None: 0), so a fit is deterministic: m: ``means_`` at those rows, c: every
covariance the data's own (ddof 1) + ``min_covar`` I, as hmmlearn; e / l (bernoulli,
categorical, poisson): see ``models.hmm_emissions``'s ``initial``.

``tol`` is hmmlearn's: the fit stops when the log-likelihood (ELBO) gains less than ``tol`` in
one iteration (``fit_hmm``'s tol is per row: tol / N is passed). hmmlearn runs one more M-step
after its last E-step; here the fit ends on an E-step, so with a ``tol`` that stops it the
final parameters are one M-step short of hmmlearn's (with ``n_iter`` reached they are equal).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from inference.errors import MixemError
from inference.hmm.fit import fit_hmm
from inference.init import kmeans_plusplus
from models.hmm import HMM

# hmmlearn attribute -> model parameter, per emission
NAMES = {
    "gaussian": {"means_": "locs", "_covars_": "covariances"},
    "bernoulli": {"emissionprob_": "probs"},
    "categorical": {"emissionprob_": "probs"},
    "poisson": {"lambdas_": "rates"},
}


class HMMEM:
    """Hidden Markov model fitted by variational EM with q over paths in ``guide``'s family.

    Args:
        n_components: K. emission: "gaussian", "bernoulli", "poisson" or "categorical".
        covariance_type: "diag" or "full" (gaussian). guide: "categorical" (Baum-Welch),
            "delta" (Viterbi training), "tempered:T", "sampled[:SEED]".
        n_iter, tol: at most ``n_iter`` M-steps; stop when the ELBO gains < ``tol``.
        random_state: int seed of the initialisation and of ``sampled`` (None: 0).
        init_params, params: letters initialised / updated (s, t, m, c, e, l as hmmlearn).
        min_covar, covars_prior, covars_weight: hmmlearn's (gaussian).
        algorithm: "viterbi" or "map", the decoder of ``predict`` and ``decode``.
        n_categories: C for the categorical emission (None: the largest code + 1).
    """

    def __init__(
        self,
        n_components: int = 1,
        emission: str = "gaussian",
        covariance_type: str = "diag",
        guide: str = "categorical",
        n_iter: int = 10,
        tol: float = 1e-2,
        random_state: int | None = None,
        init_params: str = "stmcel",
        params: str = "stmcel",
        min_covar: float = 1e-3,
        covars_prior: float = 1e-2,
        covars_weight: float = 1.0,
        algorithm: str = "viterbi",
        n_categories: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.emission = emission
        self.covariance_type = covariance_type
        self.guide = guide
        self.n_iter = n_iter
        self.tol = tol
        self.random_state = random_state
        self.init_params = init_params
        self.params = params
        self.min_covar = min_covar
        self.covars_prior = covars_prior
        self.covars_weight = covars_weight
        self.algorithm = algorithm
        self.n_categories = n_categories

    @property
    def covars_(self) -> np.ndarray:
        """(K, D, D) covariances (diag ones as diagonal matrices), hmmlearn's getter."""
        cov = self._covars_
        return np.stack([np.diag(c) for c in cov]) if cov.ndim == 2 else cov

    @covars_.setter
    def covars_(self, value: Any) -> None:
        self._covars_ = np.array(value, dtype=np.float64)

    def fit(self, X: Any, lengths: Any = None) -> HMMEM:
        """Fit on X (N, D), S sequences of ``lengths`` (S,) one after another."""
        x = _as_data(X)
        if not isinstance(self.n_components, int) or self.n_components < 1:
            raise MixemError(f"n_components must be an integer >= 1, got {self.n_components!r}")
        model = self._start(x)
        seed = 0 if self.random_state is None else int(self.random_state)
        result = fit_hmm(model, x, lengths, self.guide, max_iter=self.n_iter,
                         tol=max(self.tol, 0.0) / x.shape[0], seed=seed)  # fmt: skip
        self.model_, self.trace_ = model, result.trace
        self.n_iter_, self.converged_ = result.n_iter, result.converged
        self._publish(model)
        return self

    def _seed_generator(self) -> torch.Generator:
        seed = 0 if self.random_state is None else int(self.random_state)
        return torch.Generator().manual_seed(seed)

    def _start(self, x: Tensor) -> HMM:
        """The starting model: ``init_params`` letters by default, the rest from attributes."""
        K = self.n_components
        if x.shape[0] < K:
            raise MixemError(
                f"the number of states ({K}) exceeds the number of points ({x.shape[0]}); "
                f"use k <= {x.shape[0]}"
            )
        options: dict[str, Any] = {"covariance_type": self.covariance_type,
                                   "covars_prior": self.covars_prior,
                                   "covars_weight": self.covars_weight}  # fmt: skip
        if self.emission == "categorical":
            options["n_categories"] = self.n_categories
        centres = kmeans_plusplus(x, K, self._seed_generator())
        model = HMM.from_centres(centres, x, self.emission, min_covar=self.min_covar, **options)
        values = model.params()
        letters = {"startprob_": "s", "transmat_": "t", "means_": "m", "_covars_": "c",
                   "emissionprob_": "e", "lambdas_": "l"}  # fmt: skip
        for attr, name in {"startprob_": "startprob", "transmat_": "transmat",
                           **NAMES[self.emission]}.items():  # fmt: skip
            if letters[attr] not in self.init_params:
                if not hasattr(self, attr):
                    raise MixemError(
                        f"{attr} is not set and {letters[attr]!r} is not in init_params"
                    )
                values[name] = torch.as_tensor(np.asarray(getattr(self, attr)), dtype=x.dtype)
        options.pop("n_categories", None)
        start, trans = values.pop("startprob"), values.pop("transmat")
        keywords: dict[str, Any] = {**options, **values}
        return HMM(start, trans, self.emission, update=self.params, **keywords)

    def _publish(self, model: HMM) -> None:
        """Copy the fitted parameters to hmmlearn's attributes (numpy float64)."""
        values = {k: v.cpu().numpy() for k, v in model.params().items()}
        self.startprob_, self.transmat_ = values["startprob"], values["transmat"]
        for attr, name in NAMES[self.emission].items():
            setattr(self, attr, values[name])

    def _q(self, X: Any, lengths: Any, guide: str) -> Any:
        if not hasattr(self, "model_"):
            raise MixemError("this HMMEM is not fitted yet; call fit(X, lengths) first")
        return fit_hmm(self.model_, _as_data(X), lengths, guide, max_iter=0).q

    def score(self, X: Any, lengths: Any = None) -> float:
        """log p(X) under the fitted model (summed over the sequences)."""
        return float(self._q(X, lengths, "categorical").log_evidence)

    def predict_proba(self, X: Any, lengths: Any = None) -> np.ndarray:
        """(N, K) posterior state probabilities of every step."""
        marginals = self._q(X, lengths, "categorical").marginals
        return np.asarray(marginals.cpu().numpy())

    def decode(
        self, X: Any, lengths: Any = None, algorithm: str | None = None
    ) -> tuple[float, np.ndarray]:
        """(log-probability, states (N,)): the Viterbi path and log p(X, path), or with "map"
        each step's most probable state and the sum of their log posteriors (hmmlearn's)."""
        algorithm = algorithm or self.algorithm
        if algorithm == "viterbi":
            q = self._q(X, lengths, "delta")
            return float(q.elbo), q.labels.cpu().numpy()
        if algorithm == "map":
            marginals = self._q(X, lengths, "categorical").marginals
            best = marginals.max(1)
            return float(best.values.log().sum()), best.indices.cpu().numpy()
        raise MixemError(f"unknown decoder algorithm {algorithm!r}; choose viterbi or map")

    def predict(self, X: Any, lengths: Any = None) -> np.ndarray:
        """The decoded states (N,) (``algorithm``)."""
        return self.decode(X, lengths)[1]


def _as_data(X: Any) -> Tensor:
    """X as a float64 tensor (N, D) (a tensor keeps its floating dtype)."""
    if isinstance(X, Tensor):
        return X if X.is_floating_point() else X.double()
    try:
        return torch.as_tensor(np.asarray(X, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise MixemError(f"X must be an array of numbers (N x D): {err}") from None
