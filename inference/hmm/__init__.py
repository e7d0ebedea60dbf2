"""Hidden Markov models: the mixtures in time (issue 17).

``fit_hmm(model, x, lengths, guide)`` runs variational EM on a plain Pyro HMM (``models.hmm``)
with q over whole state paths restricted to a family: ``delta`` (Viterbi training),
``categorical`` (Baum-Welch), ``tempered:T`` and ``sampled``; ``HMMEM`` is the estimator with
hmmlearn's names. The E-step reads the chain from the model (``reader``), runs the exact chain
reductions in log space (``messages``, ``reductions``, ``layout``) and the M-step is the
model's closed form or L-BFGS (``mstep``).
"""

from inference.hmm.estep import GUIDES, HMMEStep, HMMGuide, e_step, parse_guide
from inference.hmm.estimator import HMMEM
from inference.hmm.fit import HMMFitResult, fit_hmm
from inference.hmm.layout import build_layout, choose_chunk
from inference.hmm.messages import Chain
from inference.hmm.reader import ChainForm, chain_of, read_chain
from inference.hmm.reductions import (
    Posterior,
    forward_backward,
    log_evidence,
    path_log_joint,
    sample_path,
    viterbi,
)

__all__ = [
    "GUIDES",
    "HMMEM",
    "Chain",
    "ChainForm",
    "HMMEStep",
    "HMMFitResult",
    "HMMGuide",
    "Posterior",
    "build_layout",
    "chain_of",
    "choose_chunk",
    "e_step",
    "fit_hmm",
    "forward_backward",
    "log_evidence",
    "parse_guide",
    "path_log_joint",
    "read_chain",
    "sample_path",
    "viterbi",
]
