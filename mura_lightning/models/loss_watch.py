"""The training loss watched for NaN and infinity without stalling the device: each step's check is queued on the
device (agreed across DDP ranks there) and read one step later, when the device has long finished it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from mura_lightning.errors import MuraError


class NonFiniteLossError(MuraError):
    """The training loss became NaN or infinite."""


@dataclass
class QueuedCheck:
    """One step's check: (any rank non-finite, this rank's loss) on the host once `ready`, and where it was."""

    values: torch.Tensor
    ready: torch.cuda.Event | None  # None: `values` was copied synchronously
    epoch: int
    global_step: int
    batch_idx: int


class LossWatch:
    """Queues a finiteness check of each training loss and raises NonFiniteLossError for it later (`raise_if_bad`:
    at the next step, before validation, at the end of training). Under DDP the flag is all-reduced on the device
    first, so every rank raises at the same step and none waits for the others in a collective."""

    def __init__(self) -> None:
        self.queued: QueuedCheck | None = None

    def queue(self, loss: torch.Tensor, epoch: int, global_step: int, batch_idx: int) -> None:
        """Queue the check of `loss` (the previous one must have been read)."""
        loss = loss.detach().float().reshape(1)
        values = torch.cat([(~torch.isfinite(loss)).float(), loss])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = values[:1].clone()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # no barrier: the host does not wait for it
            values = torch.cat([flag, values[1:]])
        ready = None
        if values.is_cuda:
            values = values.to("cpu", non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            values = values.cpu()
        self.queued = QueuedCheck(values, ready, epoch, global_step, batch_idx)

    def raise_if_bad(self) -> None:
        """Read the queued check, if any, and raise NonFiniteLossError when the loss of any rank was not finite."""
        check, self.queued = self.queued, None
        if check is None:
            return
        if check.ready is not None:
            check.ready.synchronize()
        any_bad, loss = check.values.tolist()
        if not any_bad:
            return
        value = f"{loss}" if not torch.isfinite(torch.tensor(loss)) else "not finite on another process"
        raise NonFiniteLossError(
            f"training loss is {value} at epoch {check.epoch}, global step {check.global_step} "
            f"(batch {check.batch_idx}). Lower optimizer.lr, try trainer.precision=32, or check the data."
        )
