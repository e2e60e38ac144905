"""Data-parallel training with the standard engine: torch DistributedDataParallel under torchrun.

Launched by ``torchrun --nproc_per_node N -m applefair ...``, every process reads its rank from
the environment variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) and
joins one process group: NCCL when the process owns a GPU, gloo on CPU. Without torchrun
(WORLD_SIZE unset or 1) every helper here is a no-op, so a trainer calls them unconditionally:

    distributed.init()
    loader = samplers.make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed)  # applefair.engine.samplers
    model = distributed.wrap(net)          # DDP only when world_size > 1
    ...
    loss_mean = distributed.all_reduce_mean(loss_sum) ; if distributed.is_main(): write(...)

Why one process and N processes give the same result (within floating-point tolerance):
``make_loader`` draws the order exactly as a single-process shuffled DataLoader does (from the
same seeded generator on every rank) and splits each *global* batch over the ranks, so the
union of the N per-rank batches is exactly the single-process batch; DDP averages gradients,
which equals the gradient of the global batch mean; and ``wrap`` turns BatchNorm into
synchronised BatchNorm, so batch statistics are those of the global batch (torch's
SyncBatchNorm on GPU; on CPU, where torch's does not run, a BatchNorm whose statistics are
summed with a differentiable all-reduce).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from applefair.engine.io import resumable_dir, resume_stage, staged_dir
from applefair.errors import InputError

log = logging.getLogger("applefair")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank among world_size processes, the backend and its device."""

    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    device: torch.device


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment variable {name}={raw!r}: expected an integer (as torchrun sets it)") from None


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def launched_rank() -> int:
    """This process's rank as torchrun set it (RANK), known even before the group is joined."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0) if _env_int("WORLD_SIZE", 1) > 1 else 0


def launched_world_size() -> int:
    """How many processes torchrun started (WORLD_SIZE), known even before the group is joined."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_distributed() else 0


def is_main() -> bool:
    """Only the main process (rank 0) writes files, logs and draws progress bars.

    Answers from torchrun's RANK before the process group exists, so run folders opened
    before training starts are also written by rank 0 only."""
    return launched_rank() == 0


def device() -> torch.device:
    """This process's device: its own GPU (LOCAL_RANK) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() if is_distributed() else torch.cuda.current_device())
    return torch.device("cpu")


def init(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (idempotent; a no-op without torchrun).

    `make_loader` and `wrap` call it, so a trainer that uses them needs no explicit call.

    `backend` defaults to NCCL when CUDA is available and gloo otherwise. Non-main ranks get
    their 'applefair' log level raised to WARNING so that only rank 0 logs progress.
    """
    size = _env_int("WORLD_SIZE", 1)
    if size > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        lrank = _env_int("LOCAL_RANK", 0)
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if chosen == "nccl":
            torch.cuda.set_device(lrank)
        dist.init_process_group(chosen, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
        if dist.get_rank() != 0:
            log.setLevel(logging.WARNING)
        log.info("distributed: %d processes, backend %s", dist.get_world_size(), chosen)
    return DistInfo(rank(), local_rank(), world_size(), dist.get_backend() if is_distributed() else None, device())


def shutdown() -> None:
    """Leave the process group (call once at the end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def run_folder(out: str | os.PathLike, resume: bool = False) -> Path:
    """The folder this process writes its run into: `out` on rank 0, a private scratch copy elsewhere.

    Under torchrun every rank runs the whole command; only rank 0's files must land in `out`.
    Other ranks write the same files into a temporary folder removed at exit (with `resume`, it
    starts as a copy of `out`, so every rank resumes from the same checkpoint).
    """
    out = Path(out)
    if is_main():
        return out
    scratch = Path(tempfile.mkdtemp(prefix=f".applefair-rank{launched_rank()}-"))
    atexit.register(shutil.rmtree, scratch, True)
    target = scratch / out.name
    if resume and out.is_dir():
        shutil.copytree(out, target)
    return target


@contextmanager
def rank_stage(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """`io.staged_dir(out)` on rank 0; on other ranks a scratch folder, removed after (one writer per run)."""
    if is_main():
        with staged_dir(out, overwrite=overwrite) as stage:
            yield stage
        return
    with tempfile.TemporaryDirectory(prefix=".applefair-rank-") as scratch:
        yield Path(scratch)


@contextmanager
def rank_resumable(out: str | os.PathLike, marker: str, overwrite: bool = False,
                   resume: bool = False) -> Iterator[tuple[Path, bool]]:
    """`io.resumable_dir` on rank 0; on other ranks a scratch copy of the resumable stage, so that every
    rank resumes from the same state and only rank 0 publishes `out`."""
    if is_main():
        with resumable_dir(out, marker, overwrite=overwrite, resume=resume) as found:
            yield found
        return
    stage = resume_stage(out)
    resuming = resume and (stage / marker).is_file()
    with tempfile.TemporaryDirectory(prefix=".applefair-rank-") as scratch:
        if resuming:
            shutil.copytree(stage, Path(scratch) / "stage")
        yield (Path(scratch) / "stage" if resuming else Path(scratch)), resuming


# ----------------------------------------------------------------------------- models


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks too (the gradient of
    the sum of all ranks' losses; DDP's averaging then makes it that of their mean)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _CPUSyncBatchNorm:
    """Mixin: BatchNorm whose training statistics cover the batches of all ranks (any backend).

    Used on CPU, where torch.nn.SyncBatchNorm refuses to run. The per-channel sums, sums of
    squares and counts are combined with a differentiable all-reduce, so the gradients are
    those of the global batch. Outside a multi-process group it is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        count = x.new_full((1,), x.numel() // c)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


_SYNC_CLASSES: dict[type, type] = {}


def _sync_class(cls: type) -> type:
    if cls not in _SYNC_CLASSES:
        _SYNC_CLASSES[cls] = type(f"Sync{cls.__name__}", (_CPUSyncBatchNorm, cls), {})
    return _SYNC_CLASSES[cls]


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Synchronise every BatchNorm of `module` across ranks (in place where possible).

    GPU: torch.nn.SyncBatchNorm. CPU: the same module objects switch to a subclass that
    all-reduces statistics, keeping their parameters (optimisers stay valid) and state-dict keys.
    """
    if not is_distributed():
        return module
    if next(module.parameters(), torch.empty(0)).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (_CPUSyncBatchNorm,
                                                                                 nn.SyncBatchNorm)):
            m.__class__ = _sync_class(type(m))
    return module


def wrap(module: nn.Module, sync_bn: bool = True, find_unused_parameters: bool = False) -> nn.Module:
    """`module` in DistributedDataParallel when world_size > 1, else `module` itself.

    Parameters and buffers are shared with `module`, so optimisers built on `module.parameters()`
    and `module.state_dict()` keep working; use `unwrap` for the inner module. A module without
    trainable parameters is returned as is (DDP has nothing to synchronise).
    """
    init()
    if not is_distributed() or isinstance(module, DistributedDataParallel):
        return module
    if not any(p.requires_grad for p in module.parameters()):
        return module
    if sync_bn:
        module = sync_batchnorm(module)
    dev = next(module.parameters()).device
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself), with CPU-synchronised BatchNorm
    layers turned back into the plain torch classes (so that export and scripting see torch's own)."""
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    plain = {sync: base for base, sync in _SYNC_CLASSES.items()}
    for m in inner.modules():
        if type(m) in plain:
            m.__class__ = plain[type(m)]
    return inner


def wrap_children(container: nn.ModuleDict, **kwargs) -> nn.ModuleDict:
    """Wrap each child of a ModuleDict in place (APPLE: each perturber, each discriminator).

    Perturbers run inside forward hooks, so the DDP wrapper must sit on each perturber (the
    module the hook calls), not on the frozen segmentor. Returns `container` for chaining.
    """
    for key in list(container.keys()):
        container[key] = wrap(container[key], **kwargs)
    return container


def unwrap_children(container: nn.ModuleDict) -> nn.ModuleDict:
    """Undo `wrap_children` in place (before saving, so state-dict keys carry no 'module.')."""
    for key in list(container.keys()):
        container[key] = unwrap(container[key])
    return container


def strip_ddp_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with DDP's 'module.' prefixes removed (from any nesting level)."""
    return {k.replace("module.", ""): v for k, v in state.items()}


# ----------------------------------------------------------------------------- reductions


def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor | float:
    """Sum over ranks (a float stays a float); identity with one process."""
    if not is_distributed():
        return x
    is_float = not torch.is_tensor(x)
    t = torch.tensor(float(x), dtype=torch.float64) if is_float else x.detach().clone()
    if dist.get_backend() == "nccl":
        t = t.to(device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) if is_float else t.to(x.device)


def all_reduce_sum_grad(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (identity with one process): for losses built from global
    sums, such as per-group means over the global batch. Every rank then holds the global value;
    the backward pass sums the ranks' gradients, so that after DDP's averaging the parameters get
    the gradient of the global loss."""
    if not is_distributed():
        return x
    if dist.get_backend() == "nccl" and not x.is_cuda:
        return _AllReduceSum.apply(x.to(device())).to(x.device)
    return _AllReduceSum.apply(x)


def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor | float:
    """Mean over ranks (for logging per-rank sums/means); identity with one process."""
    total = all_reduce_sum(x)
    n = world_size()
    return total / n if n > 1 else total


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's `obj` (picklable Python data, e.g. rows of per-sample scores), rank order."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank (e.g. a selection decision made on rank 0)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
