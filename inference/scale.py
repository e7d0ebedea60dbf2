"""Running a CLI fit past one process: streamed data, torchrun workers, mini-batches, devices.

* ``--stream``: the ``.npy`` file is read chunk by chunk at every iteration (``NpySource``);
  exact EM with memory bounded by the chunk (plus the guide's per-point q).
* ``--distributed``: under ``torchrun``, each worker owns a contiguous shard of the rows and
  the loop all-reduces its sums (``TorchDistributedReducer``; gloo on CPU, nccl on CUDA).
  Rank 0 writes the outputs, with the labels gathered in row order.
* ``--batch-size B``: stepwise mini-batch EM (``inference.online``) in memory.
* ``--device``: where the data and the model live (``cpu`` by default).

The starting parameters are computed once from the rows that ``--init`` needs (all of them for
k-means++ or random; the first chunk when ``--init`` is a file), then rank 0's are broadcast.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor

from inference.data import load_array, to_tensor
from inference.distributed import LOCAL, Reducer, TorchDistributedReducer
from inference.errors import MixemError
from inference.params import get_params, set_params
from inference.source import NpySource, shard_bounds
from inference.validation import check_data, check_k


class DataInfo(NamedTuple):
    """Shape (N, D) and dtype of the whole data, whichever worker holds which rows."""

    shape: tuple[int, int]
    dtype: torch.dtype


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream",
        action="store_true",
        help="read the .npy data in chunks at every iteration instead of loading it (bounded "
        "memory; with --init kmeans++/random the start still reads all rows once)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="run as one worker of `torchrun --nproc-per-node P`: each worker fits its shard "
        "of the rows and sums are all-reduced (gloo on CPU, nccl on CUDA); rank 0 writes",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="mini-batch (stepwise) EM with batches of this many points (default: full batch)",
    )
    parser.add_argument(
        "--passes",
        type=float,
        default=1.0,
        help="passes over the data for mini-batch EM (default: 1.0)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device for data and model, e.g. cuda (default: cpu)"
    )


def check_scale_options(args: argparse.Namespace) -> None:
    """Reject combinations that cannot work, before any data is read."""
    if args.batch_size is not None:
        if args.batch_size < 1 or not 0 < args.passes < float("inf"):
            raise MixemError("--batch-size must be >= 1 and --passes a finite number > 0")
        if args.stream or args.distributed or getattr(args, "resume", None) is not None:
            raise MixemError("--batch-size runs in memory: drop --stream, --distributed, --resume")
        if getattr(args, "anneal", None):
            raise MixemError("--batch-size takes one guide family; drop --anneal")
    if args.distributed and getattr(args, "guide", "").startswith("sampled"):
        # every worker would draw from the same seeded stream: valid stochastic EM, but not the
        # single-process fit that --distributed promises
        raise MixemError("--guide sampled is not supported with --distributed; use one process")
    guide = getattr(args, "guide", "") or ""
    if guide.startswith("topk:") and guide.count(":") == 2 and (args.stream or args.batch_size):
        # the truncated search indexes the rows of the whole data at every E-step
        raise MixemError(f"--guide {guide} searches data in memory: drop --stream and --batch-size")
    if guide.startswith("amortised") and (args.stream or args.batch_size or args.distributed):
        # the encoder is trained on minibatches of the whole data, in one process
        raise MixemError(
            f"--guide {guide} trains its encoder on data in memory, in one process: drop "
            "--stream, --batch-size and --distributed"
        )
    if args.stream and not args.data.endswith(".npy"):
        raise MixemError(f"--stream reads .npy files only, got {args.data!r}")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise MixemError(f"unknown --device {args.device!r} ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MixemError("--device cuda: no CUDA device is available here; use --device cpu")


def start_workers(args: argparse.Namespace) -> Reducer:
    """Join the torchrun process group when ``--distributed``; the local reducer otherwise."""
    if not args.distributed:
        return LOCAL
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise MixemError("--distributed must run under torchrun (RANK / WORLD_SIZE are not set)")
    if not dist.is_initialized():
        backend = "nccl" if torch.device(args.device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    if torch.device(args.device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return TorchDistributedReducer()


def stop_workers(reducer: Reducer, synchronise: bool = True) -> None:
    """Leave the process group: after a barrier when every worker got through (none tears the
    group down while another still talks to it, which makes gloo abort the process), at once
    when this one failed (the others would wait at the barrier until its timeout)."""
    if isinstance(reducer, TorchDistributedReducer):
        import torch.distributed as dist

        try:
            if synchronise:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def load_rows(args: argparse.Namespace, reducer: Reducer) -> tuple[Any, Tensor, DataInfo]:
    """(this worker's rows, the rows the start is computed from, the whole data's shape).

    The first is a tensor, or an ``NpySource`` that reads its rows on demand when streaming.
    """
    device = torch.device(args.device)
    init_from_file = args.init.endswith((".npy", ".npz"))
    if args.stream or (args.distributed and args.data.endswith(".npy")):
        if not os.path.isfile(args.data):
            raise MixemError(f"data file not found: {args.data}")
        source = NpySource(args.data, args.dtype, device=device)
        rows = source.shard(reducer.rank, reducer.world_size)
        check_k(args.k, len(source))
        init_rows = source[0 : args.chunk_size] if init_from_file else source[0 : len(source)]
        return rows, init_rows, DataInfo((len(source), source.d), source.dtype)
    x = to_tensor(load_array(args.data), args.dtype).to(device)
    check_data(x, args.k)
    start, stop = shard_bounds(x.shape[0], reducer.rank, reducer.world_size)
    return x[start:stop], x, DataInfo((x.shape[0], x.shape[1]), x.dtype)


def share_start(model: Any, reducer: Reducer) -> None:
    """Give every worker rank 0's starting parameters (they are computed alike; this makes sure)."""
    if reducer.world_size == 1:
        return
    import torch.distributed as dist

    params = get_params(model)
    for value in params.values():
        dist.broadcast(value, src=0)
    set_params(model, params)
