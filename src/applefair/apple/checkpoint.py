"""Training state of an APPLE run as one safetensors file (no pickle), written atomically.

Everything needed to continue bit-for-bit: perturber, discriminator and best-so-far weights,
both optimisers' states, the random streams (torch, data order, NumPy, Python), and (in the
header, as JSON) the epoch, history, selection state and config. Resuming from it gives the
same final result as a run that was never interrupted. The file format is shared with the
ERM trainer's checkpoint (`applefair.engine.trainstate`); only the format tag differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from applefair.engine.trainstate import load_state, save_state, state_epoch

FORMAT = "applefair-apple-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, *, modules: Mapping[str, torch.nn.Module],
                    states: Mapping[str, Mapping[str, torch.Tensor]],
                    optimizers: Mapping[str, torch.optim.Optimizer], generator: torch.Generator,
                    meta: Mapping) -> None:
    """modules: live networks; states: extra state dicts (e.g. the best epoch's perturbers)."""
    save_state(path, fmt=FORMAT, modules=modules, states=states, optimizers=optimizers, generator=generator,
               meta=meta)


def load_checkpoint(path: str | os.PathLike, *, modules: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer], generator: torch.Generator
                    ) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Restore modules, optimisers and RNG states in place; returns (meta, extra states)."""
    return load_state(path, fmt=FORMAT, what="an APPLE checkpoint", modules=modules, optimizers=optimizers,
                      generator=generator)


def checkpoint_epoch(path: str | os.PathLike) -> int | None:
    """The last completed epoch recorded in a checkpoint (None if there is none)."""
    return state_epoch(path)
