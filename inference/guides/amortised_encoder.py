"""The encoder of the ``amortised`` guide: a network x (n, D) -> logits (n, K), and its file.

The default is a small MLP (``MLPEncoder``): the rows standardised by the data's mean and
spread (fixed buffers, so that one learning rate suits any scale of the data), one hidden layer
of H SiLU units (H = 0: a linear map, the exact form of a restricted GMM's posterior logits),
then K logits. It is built in the data's dtype from a seed, without touching torch's global
random stream. Any ``nn.Module`` with the same signature can take its place.

``encoder.pt`` holds ``{"architecture": {...}, "state_dict": {...}}`` (plain types and tensors,
so ``torch.load(weights_only=True)`` reads it); an MLP is rebuilt from its architecture alone,
a user's module must be given again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from inference.errors import MixemError

MLP_KIND = "mlp"
# a feature whose spread is below this is constant: scaling it up would only amplify rounding
_CONSTANT_SPREAD = 1e-12


class MLPEncoder(nn.Module):
    """x (n, D) -> logits (n, K): (x - shift) / scale, then Linear(D, H), SiLU, Linear(H, K),
    times a learned gain exp(log_gain); H = 0 is one Linear(D, K) times the gain."""

    def __init__(self, d: int, k: int, hidden: int) -> None:
        super().__init__()
        self.d, self.k, self.hidden = d, k, hidden
        self.shift: Tensor
        self.scale: Tensor
        self.register_buffer("shift", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        if hidden == 0:
            self.layers: nn.Module = nn.Linear(d, k)
        else:
            self.layers = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, k))
        # the logits' scale, exp(log_gain): a mixture's posterior logits often differ by
        # hundreds of nats, which Adam's bounded steps reach in a few hundred steps on a log
        # scale but only in thousands on the weights themselves
        self.log_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        """(n, K) logits of the rows ``x`` (n, D)."""
        return self.log_gain.exp() * self.layers((x - self.shift) / self.scale)

    def architecture(self) -> dict[str, Any]:
        """What rebuilds this module before its state is loaded."""
        return {"kind": MLP_KIND, "d": self.d, "k": self.k, "hidden": self.hidden}


def build_mlp(x: Tensor, k: int, hidden: int, seed: int) -> MLPEncoder:
    """A fresh MLP for the data ``x`` (N, D) and K components, its weights drawn from ``seed``
    (torch's global generator is forked, so the caller's stream is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = MLPEncoder(int(x.shape[1]), k, hidden)
    encoder = encoder.to(dtype=x.dtype, device=x.device)
    with torch.no_grad():
        spread = x.std(0) if x.shape[0] > 1 else torch.ones_like(x[0])
        encoder.shift.copy_(x.mean(0))
        encoder.scale.copy_(torch.where(spread > _CONSTANT_SPREAD, spread, 1.0))
    return encoder


def architecture_of(encoder: nn.Module) -> dict[str, Any]:
    """An MLP's architecture; a user's module is recorded by its class, to be given again."""
    describe = getattr(encoder, "architecture", None)
    if isinstance(encoder, MLPEncoder) and callable(describe):
        return dict(describe())
    cls = type(encoder)
    return {"kind": "user", "class": f"{cls.__module__}:{cls.__qualname__}"}


def saved_form(encoder: nn.Module) -> dict[str, Any]:
    """What ``encoder.pt`` holds: the architecture and the state (on the CPU)."""
    state = {name: value.detach().cpu() for name, value in encoder.state_dict().items()}
    return {"architecture": architecture_of(encoder), "state_dict": state}


def rebuild(saved: Any, given: nn.Module | None, what: str) -> nn.Module:
    """The encoder of ``saved`` (``saved_form``'s dict): an MLP rebuilt from its architecture,
    or ``given`` (the user's module) with the state loaded into it."""
    arch = saved.get("architecture") if isinstance(saved, dict) else None
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(arch, dict) or not isinstance(state, dict):
        raise MixemError(f"{what}: not an encoder file (no architecture and state_dict)")
    if given is None and arch.get("kind") != MLP_KIND:
        raise MixemError(
            f"{what}: the encoder is a user's module ({arch.get('class')}); pass it as "
            "Amortised(encoder=...) to load its state into"
        )
    encoder = given
    if encoder is None:
        try:
            encoder = MLPEncoder(int(arch["d"]), int(arch["k"]), int(arch["hidden"]))
        except (KeyError, TypeError, ValueError) as err:
            raise MixemError(f"{what}: bad MLP architecture {arch!r} ({err})") from err
    dtypes = {value.dtype for value in state.values() if isinstance(value, Tensor)}
    if len(dtypes) == 1:
        encoder = encoder.to(dtype=dtypes.pop())
    try:
        encoder.load_state_dict(state)
    except (RuntimeError, KeyError) as err:
        raise MixemError(f"{what}: the saved state does not fit the encoder ({err})") from err
    return encoder


def checked_logits(logits: Any, n: int, k: int) -> Tensor:
    """The encoder's output for n rows, which must be a (n, K) tensor of logits."""
    if not isinstance(logits, Tensor) or tuple(logits.shape) != (n, k):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise MixemError(
            f"the amortised guide's encoder must map x (n, D) to logits (n, K) = ({n}, {k}), "
            f"got {got}"
        )
    return logits
