r"""Atomic training checkpoints: weights in safetensors, everything else in JSON; nothing pickled."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .distributed import DistributedContext, DistributedError

__all__ = [
    "STATE_FILE",
    "CheckpointError",
    "commit_checkpoint",
    "fingerprint",
    "has_checkpoint",
    "load_checkpoint",
    "open_checkpoint",
    "save_checkpoint",
]

STATE_FILE = "trainer.json"
FORMAT = "jko-plugin-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file, holds a corrupt one, or belongs to another model."""


def fingerprint(module: nn.Module) -> dict:
    """What must match between a model and a checkpoint: layer types, parameter shapes, the
    splines' intervals and the ODE blocks' activations (settings, not weights: the same weights on
    another interval or through another activation are another map)."""
    layers = getattr(module, "flows", None)
    kinds = [type(m).__name__ for m in layers] if layers is not None else [type(module).__name__]
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    bounds = [float(m.tail_bound) for m in module.modules() if getattr(m, "tail_bound", None) is not None]
    activations = [m.activation for m in module.modules() if isinstance(getattr(m, "activation", None), str)]
    return {"layers": kinds, "shapes": shapes, "tail_bounds": bounds, "activations": activations}


def check_model(module: nn.Module, saved: dict, directory: str | os.PathLike) -> None:
    """Raise ``CheckpointError`` unless ``module`` is the model of the checkpoint in ``directory``,
    whose fingerprint is ``saved``. A checkpoint written before a field was added is compared on
    the fields it has."""
    ours = fingerprint(module)
    differ = sorted(key for key, value in saved.items() if ours.get(key) != value)
    if differ:
        names = {"layers": "layer types", "shapes": "parameter shapes", "tail_bounds": "spline intervals"}
        what = ", ".join(names.get(key, key) for key in differ)
        raise CheckpointError(f"checkpoint in {directory} holds another model ({what} differ)")


def _atomic_write(path: Path, write: callable) -> None:
    # Write beside the target, then rename: a crash leaves either the old file or the new one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a training checkpoint."""
    return (Path(directory) / STATE_FILE).exists()


def save_checkpoint(directory: str | os.PathLike, module: nn.Module, state: dict) -> Path:
    """Save ``module``'s weights and the JSON-serialisable ``state``; return the JSON path.

    The weights go to a new file named after the number of trained blocks, then the JSON that
    names it replaces the old JSON (the commit point), then the superseded weights are removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / STATE_FILE
    old = None
    if meta_path.exists():
        old = json.loads(meta_path.read_text()).get("weights")
    weights = f"weights-{int(state['blocks_trained']):03d}.safetensors"
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}
    _atomic_write(directory / weights, lambda p: save_file(tensors, p))
    meta = {"format": FORMAT, "version": 1, "weights": weights, "fingerprint": fingerprint(module), **state}
    _atomic_write(meta_path, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    if old and old != weights and (directory / old).exists():
        (directory / old).unlink()
    return meta_path


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``(state, weights)`` from ``directory``; raise ``CheckpointError`` naming a bad file."""
    directory = Path(directory)
    meta_path = directory / STATE_FILE
    if not meta_path.exists():
        raise CheckpointError(f"no checkpoint in {directory}: {meta_path} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"corrupt checkpoint file {meta_path}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "weights" not in meta:
        raise CheckpointError(f"{meta_path} is not a jko-plugin training checkpoint")
    weights_path = directory / meta["weights"]
    if not weights_path.exists():
        raise CheckpointError(f"checkpoint weights {weights_path} named by {meta_path} are missing")
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt checkpoint weights {weights_path}: {err}") from err
    return meta, weights


# -- the protocol of a (possibly distributed) run --------------------------------------------------


def open_checkpoint(
    ctx: DistributedContext, directory: Path, *, resume: bool, overwrite: bool
) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """What a run starting in ``directory`` continues from: the loaded checkpoint with ``resume``,
    ``None`` for a fresh run. Rank 0 reads and hands it to the others (no shared file system needed).

    Raises:
        FileExistsError: A checkpoint is there, and neither ``resume`` nor ``overwrite`` is set.
        CheckpointError: A missing file or corrupt checkpoint.
    """
    loaded, error = None, None
    if ctx.is_main:
        try:
            if resume and has_checkpoint(directory):
                loaded = load_checkpoint(directory)
            elif has_checkpoint(directory) and not overwrite:
                error = FileExistsError(
                    f"{directory} already holds a checkpoint; pass resume=True to continue it "
                    "or overwrite=True to replace it"
                )
        except CheckpointError as err:
            error = err
    loaded, error = ctx.broadcast_object((loaded, error))
    if error is not None:
        raise error
    return loaded


def commit_checkpoint(ctx: DistributedContext, directory: Path, module: nn.Module, state: dict) -> None:
    """Rank 0 saves; every rank waits for it (the barrier), and all fail together if it could not.

    Raises:
        OSError: On rank 0, the save failed.
        DistributedError: On the other ranks, rank 0 could not save.
    """
    failure = None
    if ctx.is_main:
        try:
            save_checkpoint(directory, module, state)
        except OSError as err:
            failure = err
    if not ctx.all_true(failure is None):
        if failure is not None:
            raise failure
        raise DistributedError(
            f"rank 0 could not save the checkpoint of block {state.get('blocks_trained')} in {directory}"
        )
