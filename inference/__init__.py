"""Variational EM for mixture models written in Pyro, with swappable guide families."""

from inference.dpmeans import DPMeansRecord, DPMeansResult, dp_means, lambda_for_k
from inference.em import EStep, FitResult, e_step, fit
from inference.enumerate import iter_log_joint, log_joint
from inference.errors import MixemError, NonFiniteError
from inference.guides import (
    Anneal,
    Categorical,
    Delta,
    GuideFamily,
    Sampled,
    Tempered,
    TopK,
    parse_guide,
    pyro_guide,
)
from inference.load import load
from inference.responsibilities import Responsibilities
from inference.trace import TraceRecord

__all__ = [
    "Anneal",
    "Categorical",
    "DPMeansRecord",
    "DPMeansResult",
    "Delta",
    "EStep",
    "FitResult",
    "GuideFamily",
    "MixemError",
    "NonFiniteError",
    "Responsibilities",
    "Sampled",
    "Tempered",
    "TopK",
    "TraceRecord",
    "dp_means",
    "e_step",
    "fit",
    "iter_log_joint",
    "lambda_for_k",
    "load",
    "log_joint",
    "parse_guide",
    "pyro_guide",
]
