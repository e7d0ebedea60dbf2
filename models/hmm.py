"""The hidden Markov model: a mixture in time, written as ordinary Pyro.

    z_0 ~ Categorical(startprob)
    z_t | z_{t-1} ~ Categorical(transmat[z_{t-1}])             t = 1 .. T_s - 1
    x_t | z_t ~ emission(z_t)                                   (models.hmm_emissions)

for each of the S sequences that ``x`` (N, D) holds one after another (``lengths``, as hmmlearn
takes them). The contract with ``inference.hmm`` (the analogue of the mixtures' in ``models``):

* ``model(x, lengths=None)`` draws the states at sites ``"z_0", "z_1", ...`` and observes the
  rows at ``"x_0", "x_1", ...``, all inside one plate over the sequences (dim -1), the time
  steps under ``pyro.markov``; the chain is homogeneous: z_0's distribution, z_t's given
  z_{t-1} and x_t's given z_t are the same for every t and every sequence;
* it has ``n_components`` (K); optionally ``m_step(stats)``, which sets the parameters
  maximising the expected complete-data log-likelihood from ``start`` (K,), ``trans`` (K, K),
  ``counts`` (K,) and the emission family's sums (``inference.expfam``), and ``reference()``.

Sequences of different lengths are padded to the longest and the padded steps' observations
masked out, as Pyro's ``examples/hmm.py`` does. A padded *state* is not masked but stays where
its sequence ended (a transition of probability 1 to itself): masked, it would add log K per
padded step to the enumerated log evidence; drawn from ``transmat``, it would add the best
continuation's log-probability (< 0) to the MAP path's score and bias ``infer_discrete``'s
last states. Staying adds exactly 0 to both.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from inference.errors import MixemError
from models.hmm_emissions import EMISSIONS, Categorical, Gaussian


def check_lengths(lengths: Any, n_rows: int) -> Tensor:
    """(S,) int64 sequence lengths: ``lengths`` checked against ``n_rows`` N; None is [N]."""
    if lengths is None:
        return torch.tensor([n_rows])
    try:
        values = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError) as err:
        raise MixemError(f"lengths must be a 1-D sequence of integers ({err})") from None
    if values.dim() != 1 or values.numel() == 0:
        raise MixemError(
            f"lengths must be a non-empty 1-D sequence of integers, got shape {tuple(values.shape)}"
        )
    whole = not values.is_complex() and values.dtype != torch.bool
    whole = whole and bool((values == values.round()).all())
    if not whole:
        raise MixemError(f"lengths must be whole numbers, got dtype {values.dtype}")
    values = values.long()
    bad = (values <= 0).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise MixemError(f"every length must be >= 1; sequence {i} has length {int(values[i])}")
    total = int(values.sum())
    if total != n_rows:
        raise MixemError(
            f"lengths sum to {total} but the data have {n_rows} rows "
            f"({values.numel()} sequences); the lengths must add up to the number of rows"
        )
    return values


def make_emission(name: str, **options: Any) -> Any:
    """The emission family ``name`` with its ``options`` (Gaussian: covariance_type,
    covars_prior, covars_weight; categorical: n_categories)."""
    if name not in EMISSIONS:
        raise MixemError(f"unknown emission {name!r}; choose one of: " + ", ".join(EMISSIONS))
    kind = EMISSIONS[name]
    taken = {"gaussian": ("covariance_type", "covars_prior", "covars_weight"),
             "categorical": ("n_categories",)}.get(name, ())  # fmt: skip
    return kind(**{k: v for k, v in options.items() if k in taken and v is not None})


class HMM(PyroModule):
    """HMM with parameters ``startprob`` (K,), ``transmat`` (K, K) and the emission's own.

    Args:
        startprob: (K,) initial state probabilities; their dtype and device are the model's.
        transmat: (K, K) transition probabilities, rows summing to 1.
        emission: "gaussian", "bernoulli", "poisson" or "categorical".
        covariance_type, covars_prior, covars_weight: the Gaussian's (see hmm_emissions).
        update: letters of the parameters the M-step changes, hmmlearn's ``params``: s
            (startprob), t (transmat), m and c (locs, covariances), e (probs), l (rates); all
            by default.
        **params: the emission's parameters: ``locs`` (K, D) and ``covariances`` (K, D) for
            diag or (K, D, D) for full; ``probs`` (K, D) for bernoulli or (K, D, C) for
            categorical; ``rates`` (K, D) for poisson.
    """

    startprob: Tensor
    transmat: Tensor
    cli_options = ("emission", "covariance_type", "covars_prior", "covars_weight")

    def __init__(
        self,
        startprob: Tensor,
        transmat: Tensor,
        emission: str = "gaussian",
        *,
        covariance_type: str = "diag",
        covars_prior: float = 1e-2,
        covars_weight: float = 1.0,
        update: str | None = None,
        **params: Tensor,
    ) -> None:
        super().__init__()
        K = int(startprob.shape[0]) if startprob.dim() == 1 else 0
        if K < 1:
            raise MixemError(f"startprob must have shape (K,) with K >= 1, got {startprob.shape}")
        if tuple(transmat.shape) != (K, K):
            raise MixemError(f"transmat must have shape ({K}, {K}), got {tuple(transmat.shape)}")
        self.emission_name = emission
        self.emission = make_emission(
            emission,
            covariance_type=covariance_type,
            covars_prior=covars_prior,
            covars_weight=covars_weight,
        )
        if set(params) != set(self.emission.names):
            raise MixemError(
                f"the {emission} emission takes {', '.join(self.emission.names)}; "
                f"got {', '.join(sorted(params)) or 'none'}"
            )
        self.emission.check(params, K)
        self.startprob = PyroParam(startprob.detach().clone(), constraint=constraints.simplex)  # type: ignore[assignment]
        self.transmat = PyroParam(transmat.detach().clone(), constraint=constraints.simplex)  # type: ignore[assignment]
        for name, constraint in self.emission.constraints().items():
            setattr(self, name, PyroParam(params[name].detach().clone(), constraint=constraint))
        letters = "st" + "".join(self.emission.letters.values())
        self.update = letters if update is None else update
        first = params[self.emission.names[0]].detach()
        # the fixed point the Gaussian's sums are taken about (the starting means' mean)
        origin = first.mean(0) if isinstance(self.emission, Gaussian) else first[0].flatten() * 0
        self.register_buffer("origin", origin.clone())

    @classmethod
    def from_centres(
        cls, centres: Tensor, x: Tensor, emission: str = "gaussian", **options: Any
    ) -> HMM:
        """Uniform startprob and transmat, the emission started from ``centres`` (K, D) (e.g.
        k-means++ rows of ``x`` (N, D)) as its ``initial`` says; ``options``: the constructor's
        keywords, ``min_covar`` (1e-3) and ``n_categories`` (categorical)."""
        min_covar = float(options.pop("min_covar", 1e-3))
        family = make_emission(emission, **options)
        options.pop("n_categories", None)
        K = centres.shape[0]
        uniform = torch.full((K,), 1.0 / K, dtype=x.dtype, device=x.device)
        start = family.initial(centres.to(x.dtype), x, min_covar)
        return cls(uniform, uniform.expand(K, K).clone(), emission, **options, **start)

    @property
    def n_components(self) -> int:
        return int(self.startprob.shape[0])

    def emission_params(self) -> dict[str, Tensor]:
        """The emission's parameters by name (constrained values, with their graph)."""
        return {name: getattr(self, name) for name in self.emission.names}

    def params(self) -> dict[str, Tensor]:
        """Detached copies of every parameter: startprob, transmat, then the emission's."""
        values = {"startprob": self.startprob, "transmat": self.transmat}
        return {k: v.detach().clone() for k, v in {**values, **self.emission_params()}.items()}

    def reference(self) -> Tensor:
        """(D,) the fixed point the Gaussian's M-step sums are taken about."""
        origin: Tensor = self.origin
        return origin

    def validate_data(self, x: Tensor) -> None:
        """MixemError for rows of ``x`` (N, D) outside the emission's support."""
        if isinstance(self.emission, Categorical) and self.emission.n_categories is None:
            self.emission.n_categories = int(self.emission_params()["probs"].shape[2])
        self.emission.validate_data(x)

    def forward(self, x: Tensor, lengths: Any = None) -> None:
        """The generative model of ``x`` (N, D), S sequences of ``lengths`` (S,) (None: one)."""
        lengths = check_lengths(lengths, x.shape[0]).to(x.device)
        starts = lengths.cumsum(0) - lengths
        last = starts + lengths - 1
        params = self.emission_params()
        z: Tensor | None = None
        with pyro.plate("sequences", lengths.shape[0], dim=-1):
            for t in pyro.markov(range(int(lengths.max()))):
                probs = self.startprob if z is None else self._transition(z, lengths > t)
                z = pyro.sample(f"z_{t}", dist.Categorical(probs))
                # a finished sequence repeats its last row (a valid value), masked out
                rows = x[torch.minimum(starts + t, last)]
                with poutine.mask(mask=lengths > t):
                    pyro.sample(f"x_{t}", self.emission.distribution(params, z), obs=rows)

    def _transition(self, z: Tensor, active: Tensor) -> Tensor:
        """Rows of ``transmat`` for the previous states ``z`` (any shape, ..., S), a one-hot
        row (stay) for a sequence no longer ``active`` (S,) bool: shape z.shape + (K,)."""
        rows = self.transmat[z]
        if bool(active.all()):
            return rows
        stay = torch.nn.functional.one_hot(z, self.n_components).to(rows)
        return torch.where(active[:, None], rows, stay)

    def m_step(self, stats: dict[str, Tensor]) -> None:
        """Closed-form M-step (hmmlearn's ``_do_mstep``) of the letters in ``update``.

        Args:
            stats: ``start`` (K,) expected first states, ``trans`` (K, K) expected transition
                counts, ``counts`` (K,) expected visits, and the emission family's sums
                (``sum_dx``/``sum_dxdx``/``shift``, ``sum_x`` or ``sum_onehot``).
        A state never left keeps its transition row; an unvisited state its emission.
        """
        if "s" in self.update:
            self.startprob = stats["start"] / stats["start"].sum()
        if "t" in self.update:
            rows = stats["trans"].sum(1, keepdim=True)
            new = stats["trans"] / rows.clamp_min(torch.finfo(rows.dtype).tiny)
            self.transmat = torch.where(rows > 0, new, self.transmat.detach())
        current = {k: v.detach() for k, v in self.emission_params().items()}
        for name, value in self.emission.m_step(current, stats).items():
            if self.emission.letters[name] in self.update:
                setattr(self, name, value)
