"""The ``amortised`` guide's two steps: training the encoder with theta fixed, and its q.

With theta fixed the table log_joint (n, K) is a constant, and for the encoder's member
q_phi(c | x_i) = softmax(encoder(x_i))_c the ELBO is

    ELBO(phi) = sum_i sum_c q_phi(c | x_i) (log_joint[i, c] - log q_phi(c | x_i)),

which ``train`` raises by ``steps`` Adam steps on minibatches (a partial E-step: generalised
EM). ``encoder_e_step`` is one forward pass over the data, chunk by chunk, with the record's
numbers: the ELBO, the log evidence and the amortisation gap, the ELBO of the family's best
member less the encoder's (the exact posterior, so the gap is KL(q_phi || posterior) >= 0; for
``delta`` the argmax of the table, so the gap is sum_i max_c log_joint[i, c] - log_joint[i,
a_i], a_i the encoder's argmax).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from inference.distributed import Reducer
from inference.enumerate import iter_log_joint, log_joint
from inference.guides.amortised_encoder import checked_logits
from inference.reductions import logsumexp_rows
from inference.responsibilities import Assembler, Responsibilities
from inference.state import EStep

# the whole table (N, K) is kept for an E-step's training steps when it takes at most this
# many bytes (theta is fixed, so every step's rows are a lookup); larger data retrace each
# minibatch, so memory stays at a minibatch's table whatever N
TABLE_CACHE_BYTES = 64 * 2**20


def negative_elbo(logits: Tensor, table: Tensor) -> Tensor:
    """-ELBO of q = softmax(``logits``) against ``table``, both (b, K), summed over rows; the
    table is a constant (detached): only the encoder gets a gradient."""
    log_q = torch.log_softmax(logits, dim=1)
    return -(log_q.exp() * (table.detach() - log_q)).sum()


class Tables:
    """Rows of one E-step's table (theta fixed): kept whole when it is small enough
    (``TABLE_CACHE_BYTES``), else computed per minibatch and per chunk."""

    def __init__(self, model: Any, x: Tensor, k: int, chunk_size: int) -> None:
        self.model, self.x, self.chunk_size = model, x, chunk_size
        small = x.shape[0] * k * x.element_size() <= TABLE_CACHE_BYTES
        self.whole = log_joint(model, x, chunk_size) if small else None

    def rows(self, index: Tensor | None) -> Tensor:
        """(b, K) table of the rows ``index`` (b,) int64; None: every row."""
        if self.whole is not None:
            return self.whole if index is None else self.whole[index]
        rows = self.x if index is None else self.x[index]
        return log_joint(self.model, rows, self.chunk_size)

    def chunks(self) -> Iterator[tuple[int, Tensor]]:
        """``(start, table)`` per chunk of rows, as ``iter_log_joint`` yields them."""
        if self.whole is None:
            yield from iter_log_joint(self.model, self.x, self.chunk_size)
            return
        for start in range(0, self.whole.shape[0], self.chunk_size):
            yield start, self.whole[start : start + self.chunk_size]


def minibatches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[Any]:
    """``steps`` row indices (b,) int64, walking through seeded permutations of the n rows;
    None for every step when one batch holds them all (full-batch steps, nothing drawn)."""
    if batch_size >= n:
        return [None] * steps
    order: list[Tensor] = []
    while sum(len(part) for part in order) < steps * batch_size:
        order.append(torch.randperm(n, generator=generator))
    flat = torch.cat(order) if order else torch.empty(0, dtype=torch.int64)
    return [flat[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


def train(
    encoder: nn.Module,
    optimiser: torch.optim.Optimizer,
    model: Any,
    x: Tensor,
    settings: Any,
    generator: torch.Generator,
    tables: Tables,
) -> None:
    """``settings.steps`` Adam steps raising the ELBO of ``encoder``'s q at the model's fixed
    parameters, on minibatches of ``settings.batch_size`` rows of ``x`` (N, D)."""
    if settings.steps == 0:
        return
    k = int(model.n_components)
    encoder.train()
    for index in minibatches(x.shape[0], settings.batch_size, settings.steps, generator):
        rows = x if index is None else x[index]
        table = tables.rows(index)
        logits = checked_logits(encoder(rows), rows.shape[0], k)
        # the mean over the batch: Adam's step size then does not depend on the batch size
        loss = negative_elbo(logits, table) / rows.shape[0]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    encoder.eval()


def _soft_chunk(logits: Tensor, table: Tensor) -> tuple[Responsibilities, Tensor, Tensor, Tensor]:
    """q, point fit E_q[table_i], ELBO_i and gap_i of a chunk; ``logits``, ``table`` (n, K).

    ELBO_i is taken as logsumexp_i - KL_i with KL_i = sum_c q (log q - log posterior) clamped
    at 0: the same number, but never above the log evidence through rounding."""
    log_q = torch.log_softmax(logits, dim=1)
    q = log_q.exp()
    lse = logsumexp_rows(table)
    # 0 * (-inf) is 0: a component of zero probability under theta gets q's mass only as far
    # as the encoder puts it there, and that is the -inf the ELBO must see, not a NaN
    fit = torch.where(q > 0, q * table, 0.0).sum(1)
    kl = (q * (log_q - (table - lse[:, None]))).sum(1).clamp_min(0.0)
    return Responsibilities(q, None), fit, lse - kl, kl


def _delta_chunk(logits: Tensor, table: Tensor) -> tuple[Responsibilities, Tensor, Tensor, Tensor]:
    """The one-hot q at the encoder's argmax (first of ties), its fit = ELBO_i, and the gap
    to the table's row maximum, the best member of the Delta family; (n, K) each."""
    labels = logits.argmax(dim=1)
    fit = table.gather(1, labels[:, None])[:, 0]
    gap = table.amax(dim=1) - fit
    return Responsibilities.one_hot(labels, table.dtype), fit, fit, gap


def encoder_e_step(
    encoder: nn.Module,
    model: Any,
    x: Tensor,
    delta: bool,
    tables: Tables,
    reducer: Reducer,
    recycle: Responsibilities | None,
) -> EStep:
    """The encoder's q on ``x`` (N, D) in one forward pass, chunk by chunk, with the record's
    totals (over the workers of ``reducer``); ``recycle`` as ``inference.em.e_step``'s."""
    k = int(model.n_components)
    assembled, labels, fits = Assembler(x.shape[0], recycle), [], []
    elbo = evidence = gap = 0.0
    chunk = _delta_chunk if delta else _soft_chunk
    encoder.eval()
    with torch.no_grad():
        for start, table in tables.chunks():
            rows = x[start : start + table.shape[0]]
            logits = checked_logits(encoder(rows), len(rows), k)
            q, fit, point_elbo, point_gap = chunk(logits, table)
            assembled.put(start, q)
            labels.append(q.labels().clone())  # a copy: q's memory may be recycled next E-step
            fits.append(fit)
            elbo += float(point_elbo.sum())
            evidence += float(logsumexp_rows(table).sum())
            gap += float(point_gap.sum())
    totals = reducer.sum(torch.tensor([elbo, evidence, gap], dtype=torch.float64))
    q_all = assembled.result()
    return EStep(
        q_all,
        torch.cat(labels),
        torch.cat(fits),
        float(totals[0]),
        float(totals[1]),
        amortisation_gap=float(totals[2]),
    )
