r"""Training trackers: a JKO run's iterations and blocks as TensorBoard scalars."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import TracebackType

from .history import BlockRecord, StepEvent

__all__ = ["BLOCK_SCALARS", "TensorBoardLogger"]

#: The ``BlockRecord`` fields written once per block (x axis: the block index).
BLOCK_SCALARS = (
    "loss",
    "potential",
    "neg_log_det",
    "transport",
    "w2_movement",
    "movement_ratio",
    "kl_estimate",
    "nll",
    "inversion_error",
)


class TensorBoardLogger:
    """Writes ``JKOTrainer.fit``'s reports to TensorBoard: pass ``on_step=logger.on_step`` and
    ``callback=logger.on_block``.

    Per iteration (x axis: iterations over all blocks): ``train/loss``, ``train/potential``,
    ``train/neg_log_det``, ``train/transport``, ``train/lr`` and ``train/block``. Per block (x axis:
    the block index): ``block/<field>`` for the fields in ``BLOCK_SCALARS``; on a log scale,
    ``block/w2_movement`` and ``block/kl_estimate`` show the geometric decay of proximal descent.

    Args:
        log_dir: Folder of the event files (created).

    Raises:
        ImportError: ``tensorboard`` is not installed (the message says how to install it).

    Example::

        with TensorBoardLogger("runs/moons") as log:
            trainer.fit(x, on_step=log.on_step, callback=log.on_block)
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                f"logging to {log_dir} needs TensorBoard: pip install tensorboard ({err})"
            ) from err
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.iterations = 0

    def on_step(self, event: StepEvent) -> None:
        """Write one iteration's loss terms and learning rate."""
        for name in ("loss", "potential", "neg_log_det", "transport", "lr", "block"):
            self.writer.add_scalar(f"train/{name}", getattr(event, name), self.iterations)
        self.iterations += 1

    def on_block(self, record: BlockRecord) -> None:
        """Write one trained block's diagnostics."""
        values = asdict(record)
        for name in BLOCK_SCALARS:
            self.writer.add_scalar(f"block/{name}", values[name], record.index)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
