"""Data-parallel training (``train.gpus > 1``): N processes inside the one train job.

The cluster gives the train job N GPUs; this module starts one worker process per GPU
(``torch.multiprocessing``, spawn), joins them in a process group (nccl on CUDA, gloo on
CPU, which is how it is tested) and runs the ordinary :func:`biapipe.training.loop.train_model`
loop in each, with the model wrapped in ``DistributedDataParallel``.

**Same result as one process.** ``train.batch_size`` stays the *global* batch. Every
rank loads only its own slice of each global batch (patches are a pure function of
``(seed, epoch, index)``, so rank r draws exactly the patches the single process would
have put at those positions), runs the forward pass on it, and then all-gathers the
logits and targets of the whole batch, so the loss is computed on the global batch
exactly as in a single process. That matters here: soft Dice is a sum over the batch
(:mod:`biapipe.training.losses`), so the mean of per-slice losses would be a different loss.
Only the rank's own slice of the gathered logits carries gradient, so backward gives
rank r the part of the full-batch gradient that flows through its samples; DDP averages
over ranks, and scaling the loss by N beforehand turns that average into the sum, i.e.
the full-batch gradient. Per-epoch losses then equal the single-process ones up to float
rounding (tested on CPU with rtol 1e-4). What still differs: dropout masks (each rank has
its own RNG stream) and, on CPU, BatchNorm (below).

**BatchNorm.** On CUDA the model's BatchNorm layers become ``SyncBatchNorm``, whose
batch statistics (and running statistics) are those of the global batch, as in a single
process; small per-GPU slices would otherwise normalize with noisy statistics. torch's
SyncBatchNorm runs on GPUs only, so on CPU each rank normalizes with the statistics of its
own slice (as in every plain DDP set-up) and the running statistics saved are rank 0's:
CPU runs with ``norm: batch`` match a single process only approximately; ``group``,
``instance`` and ``none`` match.

**Only rank 0 talks to the outside.** Validation (on the unwrapped model, so that no
collective runs while the other ranks wait), logging, ``resume.pt`` and the outputs
happen on rank 0; the epoch's numbers are then broadcast so that the learning-rate
plateau, best-epoch and early-stopping decisions are identical on every rank and no rank
waits in a collective that the others have left. Checkpoints hold the unwrapped model's
``state_dict`` (no ``module.`` prefix) and are identical in format to a single-process
run's; a run may resume with a different ``train.gpus``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import logging.handlers
import math
import multiprocessing
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.devices import resolve_device
from ..core.errors import BiapipeError, ConfigError
from ..data.sources import PathPair
from .loop import Trainable, evaluate, train_model

#: Collectives wait this long: other ranks idle while rank 0 validates and writes checkpoints.
#: A crashed rank does not leave the others waiting that long: the launcher sees it exit
#: and terminates the rest.
TIMEOUT = datetime.timedelta(minutes=60)


# --------------------------------------------------------------------------- launching (parent process)


def check_gpus(tcfg: dict[str, Any]) -> int:
    """``train.gpus``, checked against the batch size: each rank gets an equal slice of every batch."""
    gpus, batch = int(tcfg["gpus"]), int(tcfg["batch_size"])
    if gpus < 1:
        raise ConfigError("train.gpus", f"must be at least 1, got {gpus}")
    if batch % gpus:
        raise ConfigError("train.gpus", f"train.batch_size ({batch}) must be divisible by train.gpus ({gpus}): "
                                        "the global batch is split evenly across the processes")
    return gpus


def launch(cfg: dict[str, Any], task: Trainable, train_pairs: Sequence[PathPair], val_pairs: Sequence[PathPair],
           out_dir: Path, log: logging.Logger, max_epochs_this_call: int | None) -> dict[str, Any]:
    """Run :func:`biapipe.training.loop.train_model` in ``train.gpus`` processes; return rank 0's summary.

    Runs in the train job's own process, which only waits: its log records come from rank 0
    through a queue, and a :class:`BiapipeError` raised in a worker is raised here again
    (with its type, so a bad config still reads as one line).
    """
    tcfg = cfg["train"]
    world = check_gpus(tcfg)
    if not dist.is_available():
        raise ConfigError("train.gpus", "this torch build has no torch.distributed; use train.gpus: 1")
    device = resolve_device(str(tcfg["device"]), "train.device")
    first_gpu = 0
    if device.type == "cuda":
        first_gpu = device.index or 0
        visible = torch.cuda.device_count()
        if first_gpu + world > visible:
            raise ConfigError("train.gpus", f"{world} GPUs requested (from {device}) but {visible} CUDA "
                                            f"device(s) are visible to this job")
        backend = "nccl"
    elif device.type == "cpu":
        if not dist.is_gloo_available():
            raise ConfigError("train.gpus", "CPU data-parallel training needs torch's gloo backend")
        backend = "gloo"
    else:
        raise ConfigError("train.gpus", f"data-parallel training runs on CUDA or CPU, not on {device}")
    threads = max(1, int(tcfg["threads"]) // world)
    log.info("data-parallel training: %d processes (%s, %s backend), %d threads each", world,
             f"cuda:{first_gpu}..{first_gpu + world - 1}" if backend == "nccl" else "cpu", backend, threads)

    # The parent holds the rendezvous store: bound to port 0, it gets a free port without races.
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=TIMEOUT, wait_for_workers=False)
    ctx = torch.multiprocessing.get_context("spawn")
    log_queue, results = ctx.Queue(), ctx.SimpleQueue()
    listener = logging.handlers.QueueListener(log_queue, _ToLogger(log))
    listener.start()
    args = (world, store.port, backend, first_gpu, threads, cfg, task, list(train_pairs), list(val_pairs),
            Path(out_dir), max_epochs_this_call, log_queue, results, log.getEffectiveLevel(),
            multiprocessing.get_start_method())
    try:
        with _main_not_reimported():
            procs = torch.multiprocessing.start_processes(_worker, args=args, nprocs=world, join=False,
                                                          start_method="spawn")
        while not procs.join():
            pass
    except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException):
        error = next((m for m in _drain(results) if m[0] == "error"), None)
        if error is not None:
            raise _rebuild_error(*error[1:]) from None
        raise
    finally:
        listener.stop()
    summary = next((m[1] for m in _drain(results) if m[0] == "done"), None)
    if summary is None:
        raise RuntimeError("data-parallel training ended without a result from rank 0")
    return summary


class _ToLogger(logging.Handler):
    """Hands records from rank 0 to the job's logger (and so to its handlers and parents)."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Start processes without re-running the parent's ``__main__`` in them.

    A spawned child normally imports the parent's main script as ``__mp_main__``. The train
    job's main is Snakemake's generated script, which calls the training at top level with
    no ``if __name__ == "__main__"`` guard, so every worker would start training again.
    The workers need nothing from ``__main__`` (the task and config travel by pickle, their
    classes by module name), so the main file is hidden while the processes start.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _drain(queue: Any) -> list[tuple[Any, ...]]:
    out = []
    while not queue.empty():
        out.append(queue.get())
    return out


def _rebuild_error(cls: type[BiapipeError], args: tuple[Any, ...], attrs: dict[str, Any]) -> BiapipeError:
    """The worker's exception again; BiapipeError subclasses take other __init__ arguments than
    ``args``, so default unpickling cannot rebuild them."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(attrs)
    return exc


# --------------------------------------------------------------------------- a worker (one rank)


def _worker(rank: int, world: int, port: int, backend: str, first_gpu: int, threads: int, cfg: dict[str, Any],
            task: Trainable, train_pairs: list[PathPair], val_pairs: list[PathPair], out_dir: Path,
            max_epochs_this_call: int | None, log_queue: Any, results: Any, level: int, start_method: str) -> None:
    # A spawned process defaults to spawn for its own children too; data-loader workers
    # (started every epoch) would then import torch again each time (8 s -> 38 s for a test run).
    multiprocessing.set_start_method(start_method, force=True)
    log = _rank_logger(rank, log_queue, level)
    try:
        if backend == "nccl":
            device = f"cuda:{first_gpu + rank}"
            torch.cuda.set_device(device)
        else:
            device = "cpu"
        store = dist.TCPStore("127.0.0.1", port, None, False, timeout=TIMEOUT)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=TIMEOUT)
        try:
            rank_cfg = {**cfg, "train": {**cfg["train"], "device": device, "threads": threads}}
            summary = train_model(rank_cfg, task, train_pairs, val_pairs, out_dir, log=log,
                                  max_epochs_this_call=max_epochs_this_call, ddp=Rank(rank, world))
        finally:
            dist.destroy_process_group()
    except BiapipeError as exc:
        results.put(("error", type(exc), exc.args, dict(vars(exc))))
        raise
    if rank == 0:
        results.put(("done", {**summary, "processes": world}))


def _rank_logger(rank: int, log_queue: Any, level: int) -> logging.Logger:
    """Rank 0 logs to the parent through ``log_queue``; the other ranks are silent."""
    log = logging.getLogger(f"biapipe.ddp.rank{rank}")
    log.propagate = False
    log.setLevel(level)
    if rank == 0:
        log.addHandler(logging.handlers.QueueHandler(log_queue))
    else:
        log.disabled = True
    return log


class Rank:
    """What :func:`biapipe.training.loop.train_model` needs to know and do differently as one rank."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.net: nn.Module | None = None
        #: a rank without a sample in a (short last) batch runs an empty batch when the model has
        #: SyncBatchNorm (a stand-in sample would enter the global statistics), else one stand-in
        #: sample whose output is dropped (InstanceNorm fails on an empty batch)
        self.empty_batches = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """SyncBatchNorm on CUDA (see module docstring); before the optimizer sees the parameters."""
        if device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.empty_batches = True
        return model

    def wrap(self, model: nn.Module, device: torch.device) -> None:
        """The DDP wrapper used for training steps; after resuming, so every rank starts from the
        same weights (DDP also broadcasts rank 0's at construction)."""
        from torch.nn.parallel import DistributedDataParallel

        self.net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    # ------------------------------------------------------------------ the epoch hooks

    def train_epoch(self, run: Any, loss_fn: nn.Module, dataset: Dataset, tcfg: dict[str, Any],
                    seed: int) -> float:
        """One epoch on this rank's slices; returns the patch-weighted mean loss of the global batches."""
        assert self.net is not None
        run.train_mode()
        total, count = 0.0, 0
        for parts, sizes in self._slices(dataset, int(tcfg["batch_size"]), int(tcfg["num_workers"]), seed):
            stand_in = sizes[self.rank] == 0
            x, y = run.batch(parts)
            if stand_in and self.empty_batches:
                x, y = x[:0], y[:0]
            run.optimizer.zero_grad(set_to_none=True)
            with run.autocast():
                logits = self.net(x)
            logits = logits.float()
            if stand_in:
                logits, y = logits[:0], y[:0]  # still part of the graph: zero gradients, but DDP sees them
            logits, y = self._gather(logits, sizes), self._gather(y, sizes)
            loss = loss_fn(logits, y)  # the global batch's loss, the same on every rank
            run.step(loss * self.world)  # DDP averages the ranks' gradients; the full-batch one is their sum
            total += float(loss.detach()) * y.shape[0]
            count += y.shape[0]
        return total / count

    def evaluate(self, run: Any, loss_fn: nn.Module, dataset: Dataset, tcfg: dict[str, Any], seed: int,
                 scorer: Any = None) -> float:
        """Validation on rank 0 with the unwrapped model; NaN elsewhere until :meth:`agree`."""
        return evaluate(run, loss_fn, dataset, tcfg, seed, scorer) if self.main else math.nan

    def agree(self, row: dict[str, float]) -> dict[str, float]:
        """Rank 0's epoch numbers on every rank, so every rank takes the same decisions."""
        box = [row]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------------ helpers

    def _slices(self, dataset: Dataset, batch_size: int, num_workers: int,
                seed: int) -> Iterator[tuple[Sequence[torch.Tensor], list[int]]]:
        """This rank's slice of every global batch, with the slice sizes of all ranks.

        The global batches are those of :func:`biapipe.training.loop.batches`. A short last batch is
        split as evenly as it goes; a rank left without a sample loads the batch's first one
        as a stand-in (its output is dropped), so that it still takes part in every step.
        """
        n, world = len(dataset), self.world
        plan = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            sizes = [m // world + (r < m % world) for r in range(world)]
            first = start + sum(sizes[:self.rank])
            plan.append((list(range(first, first + sizes[self.rank])) or [start], sizes))
        if num_workers == 0:
            for indices, sizes in plan:
                items = [dataset[i] for i in indices]
                yield tuple(torch.stack(parts) for parts in zip(*items)), sizes
            return
        loader = DataLoader(dataset, batch_sampler=[indices for indices, _ in plan], num_workers=num_workers,
                            generator=torch.Generator().manual_seed(seed))
        for parts, (_, sizes) in zip(loader, plan):
            yield parts, sizes

    def _gather(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """The global batch from every rank's slice; only this rank's part keeps its gradient.

        Slices are padded to the largest size (collectives need equal shapes) and sent in a
        type every backend carries (nccl has no int16, the targets' type).
        """
        longest = max(sizes)
        wire = _wire_dtype(local.dtype)
        sent = local.detach().to(wire).contiguous()
        if sent.shape[0] < longest:
            sent = torch.cat([sent, sent.new_zeros((longest - sent.shape[0], *sent.shape[1:]))])
        received = [torch.empty_like(sent) for _ in range(self.world)]
        dist.all_gather(received, sent)
        pieces = [part[:size].to(local.dtype) for part, size in zip(received, sizes)]
        pieces[self.rank] = local
        return torch.cat(pieces)


def _wire_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype.is_floating_point or dtype in (torch.int32, torch.int64, torch.uint8):
        return dtype
    return torch.int32 if dtype != torch.bool else torch.uint8
