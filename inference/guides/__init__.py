"""Guide families over the assignment site ``"z"``, one per file, and their CLI names.

``protocol``: what the EM loop needs of a family (``GuideFamily``) and schedules of them;
``delta``, ``categorical``, ``tempered``, ``topk``, ``sampled``: the families; ``amortised``
(with ``amortised_encoder`` and ``amortised_train``): q from an encoder network; ``truncated``
(with ``search`` and ``truncated_fit``): ``topk:k:G``, sublinear in K; ``anneal``: the
schedule ``anneal:T0:T1:STEPS``; ``pyro_guide``: the Pyro guide of any member; ``registry``:
CLI name -> (parser, syntax). A new family is one file and one line of ``registry``.

| family          | q_i                                              | EM becomes               |
|-----------------|--------------------------------------------------|--------------------------|
| ``delta``       | one-hot at argmax log_joint[i]                   | hard EM (K-means)        |
| ``categorical`` | softmax(log_joint[i]), the exact posterior       | classical EM             |
| ``tempered:T``  | softmax(log_joint[i] / T)                        | deterministic annealing  |
| ``topk:k``      | posterior on the k largest entries, renormalised | truncated variational EM |
| ``sampled``     | one-hot at a draw from the posterior             | stochastic EM            |
| ``amortised``   | softmax(encoder(x_i)), trained a few steps       | generalised EM           |

Every class is a small frozen dataclass; equal objects give equal E-steps (``Sampled`` up to
its generator's state), which is how the EM loop tells that a schedule has settled.
"""

from inference.guides.amortised import Amortised
from inference.guides.anneal import Anneal
from inference.guides.categorical import Categorical
from inference.guides.delta import Delta
from inference.guides.protocol import GuideFamily, Schedule, as_schedule
from inference.guides.pyro_guide import is_exact_for_trace_elbo, pyro_guide
from inference.guides.registry import (
    FAMILIES,
    GUIDE_SYNTAX,
    parse_anneal,
    parse_guide,
    parse_schedule,
)
from inference.guides.sampled import Sampled
from inference.guides.search import candidate_log_joint, select_top, summarise
from inference.guides.spelling import format_number
from inference.guides.tempered import Tempered
from inference.guides.topk import TopK
from inference.guides.truncated import TruncatedTopK, truncated_e_step

__all__ = [
    "FAMILIES",
    "GUIDE_SYNTAX",
    "Amortised",
    "Anneal",
    "Categorical",
    "Delta",
    "GuideFamily",
    "Sampled",
    "Schedule",
    "Tempered",
    "TopK",
    "TruncatedTopK",
    "as_schedule",
    "candidate_log_joint",
    "format_number",
    "is_exact_for_trace_elbo",
    "parse_anneal",
    "parse_guide",
    "parse_schedule",
    "pyro_guide",
    "select_top",
    "summarise",
    "truncated_e_step",
]
