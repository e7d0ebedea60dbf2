"""``amortised[:HIDDEN]`` and ``amortised-delta[:HIDDEN]``: q(z | x) from an encoder network.

Every other family is computed per point from the table log_joint (n, K): its best member.
This one is a function of x: an encoder (``amortised_encoder``: an MLP by default, a user's
``nn.Module`` allowed) maps x (n, D) to logits (n, K), and q_i = softmax(encoder(x_i)). Its
E-step is partial (generalised EM): ``steps`` Adam steps on the encoder's weights raising the
ELBO with theta fixed (``amortised_train``), warm-started from the previous E-step's encoder,
then one forward pass gives q. The M-step is the model's, unchanged.

For a mixture the ELBO-optimal categorical q is the exact posterior, so what this family
loses against ``categorical`` at the same theta is all amortisation (Cremer et al. 2018):
each record's ``amortisation_gap`` = ELBO(best member) - ELBO(encoder's q) >= 0. The Delta
variant takes the encoder's argmax: a one-hot q whose gap is to the table's row maximum (what
``delta`` would take); it is trained as the soft one is (the argmax of a trained softmax: the
argmax itself has no gradient to follow).

Which EM loop calls what: ``inference.em.fit`` calls ``data_e_step(..., train_encoder=True)`` (the
family needs the rows x, not only their table); ``inference.em.e_step`` (``predict``, the
estimator's ``predict``) calls it with ``train_encoder=False``: one forward pass, no training. The
``e_step(log_joint)`` of the other families cannot be taken from a table and is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from inference.distributed import LOCAL, Reducer
from inference.enumerate import ASSIGNMENT_SITE, DATA_PLATE, DEFAULT_CHUNK_SIZE
from inference.errors import MixemError
from inference.guides.amortised_encoder import build_mlp, rebuild, saved_form
from inference.guides.amortised_train import Tables, encoder_e_step, train
from inference.guides.spelling import format_number, parse_int
from inference.outputs import atomic_write
from inference.responsibilities import Responsibilities
from inference.state import EStep

DEFAULT_HIDDEN = 32
ENCODER_FILE = "encoder.pt"


class _Trained:
    """What an ``Amortised`` family learns during a fit: its encoder, the encoder's Adam state
    and the generator its minibatches are drawn from (the family's mutable part)."""

    def __init__(self) -> None:
        self.encoder: nn.Module | None = None
        self.optimiser: torch.optim.Optimizer | None = None
        self.generator: torch.Generator | None = None


@dataclass(frozen=True)
class Amortised:
    """q(z | x) = softmax(encoder(x)), trained on the ELBO with theta fixed at each E-step.

    Args:
        hidden: units of the default MLP's hidden layer (0: a linear map x -> logits, the
            form of a restricted GMM's exact posterior logits); ignored with ``encoder``.
        steps: Adam steps per E-step (0: the encoder is not trained, only evaluated).
        lr: Adam's learning rate (the loss is the ELBO per row of a minibatch).
        batch_size: rows per step, drawn in seeded permutations (>= N: full-batch steps).
        seed: the MLP's initial weights and the minibatches' order.
        delta: the one-hot q at the encoder's argmax (``amortised-delta``, a hard family).
        encoder: a user's ``nn.Module`` x (n, D) -> logits (n, K); a copy of it is trained
            (``trained_encoder``), the module given stays as it was; default: an MLP built for
            the data at the first E-step.

    One instance keeps training its encoder across the fits it is given to (warm starts);
    ``untrained()`` is the same family before any.
    """

    hidden: int = DEFAULT_HIDDEN
    steps: int = 100
    lr: float = 1e-2
    batch_size: int = 1024
    seed: int = 0
    delta: bool = False
    encoder: nn.Module | None = field(default=None, compare=False)
    trained: _Trained = field(init=False, compare=False, repr=False, default_factory=_Trained)

    def __post_init__(self) -> None:
        counts = {"hidden": (self.hidden, 0), "steps": (self.steps, 0)}
        counts["batch_size"] = (self.batch_size, 1)
        for what, (value, least) in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise MixemError(f"Amortised needs an integer {what} >= {least}, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise MixemError(f"Amortised needs a learning rate lr > 0, got {self.lr!r}")
        if self.encoder is not None and not isinstance(self.encoder, nn.Module):
            raise MixemError(
                f"Amortised's encoder must be a torch nn.Module, got {type(self.encoder).__name__}"
            )
        self.trained.encoder = None if self.encoder is None else copy.deepcopy(self.encoder)

    @property
    def name(self) -> str:
        base = "amortised-delta" if self.delta else "amortised"
        return base if self.hidden == DEFAULT_HIDDEN else f"{base}:{self.hidden}"

    @property
    def hard(self) -> bool:
        return self.delta

    @property
    def trained_encoder(self) -> nn.Module | None:
        """The encoder as trained so far (None before the first E-step builds the MLP)."""
        return self.trained.encoder

    def untrained(self) -> Amortised:
        """This family with its encoder as first given (or to be built), no Adam state."""
        return dataclasses.replace(self)

    def e_step(self, log_joint: Tensor) -> Responsibilities:
        """Refused: the encoder's q is a function of the rows x, which a table does not hold."""
        raise MixemError(
            f"{self.name}: q is the encoder's output for the rows x, not a function of the "
            "log-joint table; fit it with inference.em.fit (or mixem fit / MixtureEM)"
        )

    def encoder_for(self, x: Tensor, k: int) -> nn.Module:
        """The encoder, built for ``x`` (N, D) and K components at its first use."""
        if self.trained.encoder is None:
            self.trained.encoder = build_mlp(x, k, self.hidden, self.seed)
        return self.trained.encoder

    def data_e_step(
        self,
        model: Any,
        x: Tensor,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        reducer: Reducer = LOCAL,
        recycle: Responsibilities | None = None,
        train_encoder: bool = True,
    ) -> EStep:
        """The E-step on ``x`` (N, D): ``steps`` training steps when ``train_encoder``, then
        the encoder's q with the record's ELBO, log evidence and amortisation gap."""
        if not isinstance(x, Tensor):
            raise MixemError(f"{self.name} trains on data held in memory; drop --stream")
        if reducer.world_size > 1 and train_encoder:
            raise MixemError(f"{self.name} trains its encoder in one process; drop --distributed")
        encoder = self.encoder_for(x, int(model.n_components))
        tables = Tables(model, x, int(model.n_components), chunk_size)
        if train_encoder and self.steps > 0:
            train(encoder, self._optimiser(encoder), model, x, self, self._generator(), tables)
        return encoder_e_step(encoder, model, x, self.delta, tables, reducer, recycle)

    def _optimiser(self, encoder: nn.Module) -> torch.optim.Optimizer:
        """Adam over the encoder's weights, kept across E-steps (its moments warm-start too)."""
        if self.trained.optimiser is None:
            self.trained.optimiser = torch.optim.Adam(encoder.parameters(), lr=self.lr)
        return self.trained.optimiser

    def _generator(self) -> torch.Generator:
        if self.trained.generator is None:
            self.trained.generator = torch.Generator().manual_seed(self.seed)
        return self.trained.generator

    def saved_form(self) -> dict[str, Any] | None:
        """What ``encoder.pt`` holds (``amortised_encoder.saved_form``); None before a fit."""
        encoder = self.trained.encoder
        return None if encoder is None else saved_form(encoder)

    def restore(self, saved: Any, what: str) -> None:
        """Take the encoder of ``saved`` (a fit's ``encoder.pt``), in place of any other."""
        self.trained.encoder = rebuild(saved, self.encoder, what)
        self.trained.optimiser = None  # Adam's moments are not saved: they start again

    def pyro_guide(self, x: Tensor, k: int) -> Any:
        """An ordinary Pyro guide over ``"z"`` with this family's encoder (built for ``x``
        (N, D) and K if it has none yet), registered with ``pyro.module``: ``SVI`` with
        ``TraceEnum_ELBO`` trains it (and the model's parameters) as Pyro would."""
        encoder = self.encoder_for(x, k)

        def guide(rows: Tensor) -> None:
            pyro.module("amortised_encoder", encoder)
            with pyro.plate(DATA_PLATE, rows.shape[0]):
                logits = encoder(rows)
                pyro.sample(
                    ASSIGNMENT_SITE,
                    dist.Categorical(logits=logits),
                    infer={"enumerate": "parallel"},
                )

        return guide


def write_encoder(directory: str | Path, family: Any) -> None:
    """``directory/encoder.pt`` for a trained amortised family; nothing for any other."""
    saved = family.saved_form() if isinstance(family, Amortised) else None
    if saved is not None:
        atomic_write(Path(directory) / ENCODER_FILE, lambda handle: torch.save(saved, handle))


def read_encoder(directory: str | Path, what: str) -> Any:
    """The saved form in ``directory/encoder.pt`` (as ``Amortised.restore`` takes it)."""
    path = Path(directory) / ENCODER_FILE
    if not path.is_file():
        raise MixemError(
            f"{what}: no {ENCODER_FILE}; only a fit with an amortised guide saves its encoder"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a damaged file
        raise MixemError(f"{what}: {ENCODER_FILE} is not a readable encoder ({err})") from err


SYNTAX = "amortised[:HIDDEN], amortised-delta[:HIDDEN] (an encoder MLP, HIDDEN >= 0 units)"


def parse(spec: str, arg: str | None, n_components: int, seed: int, delta: bool) -> Amortised:
    """``amortised`` / ``amortised:HIDDEN`` (and the ``-delta`` spellings), the fit's seed."""
    if arg is None:
        return Amortised(seed=seed, delta=delta)
    hidden = parse_int(arg)
    if hidden is None or hidden < 0:
        name = "amortised-delta" if delta else "amortised"
        raise MixemError(
            f"bad guide {spec!r}: {name} or {name}:HIDDEN with HIDDEN an integer >= 0 (the "
            f"encoder's hidden units; 0 is a linear map; default {format_number(DEFAULT_HIDDEN)})"
        )
    return Amortised(hidden=hidden, seed=seed, delta=delta)


def parse_soft(spec: str, arg: str | None, n_components: int, seed: int) -> Amortised:
    return parse(spec, arg, n_components, seed, delta=False)


def parse_delta(spec: str, arg: str | None, n_components: int, seed: int) -> Amortised:
    return parse(spec, arg, n_components, seed, delta=True)
