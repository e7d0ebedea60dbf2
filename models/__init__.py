"""Mixture models, each an ordinary Pyro model in its own file.

The contract between a model and the inference code (``inference/``) is small:

* the model is callable as ``model(x)`` with data ``x`` of shape (N, D); it draws the
  assignment at sample site ``"z"`` (a discrete distribution over ``range(K)``) and observes
  ``x`` at site ``"x"``, both inside ``pyro.plate("data", N)``;
* it is a density of x: its distributions may depend on the parameters and on the number of
  rows, not on the values of x other than at the observed site (the E-step traces it once per
  chunk length and swaps in each chunk's rows). Models whose data reach a site as a per-point
  mask or a transformed observation are traced per chunk; in every E-step the first reuse is
  compared with a fresh trace, which catches a model that breaks the rule only when that pair
  of chunks shows it;
* it has an ``n_components`` attribute (K);
* optionally, a closed-form M-step ``m_step(stats)`` that sets the parameters maximising the
  expected complete-data log-likelihood from sums over the points. When the observed site is
  an exponential family of ``inference.expfam``'s table (every model here), the sums are the
  family's: ``"counts"`` (K,) and its named moments (``"sum_x"``, ``"sum_dx"`` about
  ``"shift"``, ...; the table's docstrings say which); a model of another family declares
  its own ``sufficient_statistics(x, q) -> dict`` (additive over points, with ``"counts"``).
  Location families take ``reference()`` (D,), a fixed point the sums are taken about.
  Without ``m_step``, an exponential family gets an L-BFGS M-step on the sums alone, any other
  model the generic gradient M-step on Pyro's ELBO (``inference.mstep``).

Every model is plain Pyro: nothing in a model is written for speed, and nothing knows about
guides or K-means; the inference code reads the observed site's family from a trace.
"""

from typing import Any

from models.bernoulli import BernoulliMixture
from models.categorical import CategoricalMixture
from models.dp_mixture import DPMixture
from models.gmm import GMM
from models.poisson import PoissonMixture
from models.restricted_gmm import RestrictedGMM
from models.vmf import VMFMixture

# CLI name -> model class; each class has ``from_centres(centres (K, D), x (N, D), **options)``
# (options such as ``covariance_type`` only where the model takes them) and may have
# ``validate_data(x)`` raising MixemError for data outside its support.
MODELS: dict[str, Any] = {
    "restricted-gmm": RestrictedGMM,
    "gmm": GMM,
    "bernoulli": BernoulliMixture,
    "poisson": PoissonMixture,
    "categorical": CategoricalMixture,
    "vmf": VMFMixture,
    "dp-gmm": DPMixture,
}

__all__ = [
    "GMM",
    "MODELS",
    "BernoulliMixture",
    "CategoricalMixture",
    "DPMixture",
    "PoissonMixture",
    "RestrictedGMM",
    "VMFMixture",
]
