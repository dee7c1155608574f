"""Processes and progress: the one home of ``accelerate`` plumbing.

Algorithms take plain inputs and a :class:`Shard` (which slice of the work is this
process's, and how to combine the slices); :data:`LOCAL` is one process doing everything,
so a script never needs a process object. Under ``accelerate launch`` :func:`shard` gives
the rank's slice. Work is always cut the same way (item ``i`` to process
``i % count``), so results never depend on how many processes share it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch


def dist_state():
    """accelerate's process state: one process here, or one per ``accelerate launch`` rank."""
    from accelerate import PartialState
    cpu = (not torch.cuda.is_available()
           or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
    return PartialState(cpu=cpu)


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count``: the items it works on and how results come together."""

    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def mine(self, n: int) -> list[int]:
        """The items of ``range(n)`` this process works on."""
        return [i for i in range(n) if i % self.count == self.index]

    def gather(self, obj) -> list:
        """Every process's ``obj`` (picklable), in process order."""
        if self.count == 1:
            return [obj]
        from accelerate.utils import gather_object
        return gather_object([obj])

    def broadcast(self, obj):
        """The main process's ``obj`` on every process."""
        if self.count == 1:
            return obj
        from accelerate.utils import broadcast_object_list
        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def wait(self) -> None:
        if self.count > 1:
            dist_state().wait_for_everyone()


LOCAL = Shard()


def shard() -> Shard:
    """This process's shard (``LOCAL`` outside ``accelerate launch``)."""
    s = dist_state()
    return Shard(s.process_index, s.num_processes) if s.num_processes > 1 else LOCAL


def gather_perms(sh: Shard, mine: dict[int, dict]) -> dict[int, dict]:
    """``{item: {group: permutation}}`` from every process, merged (tensors travel as lists)."""
    if sh.count == 1:
        return mine
    merged = {}
    for part in sh.gather({i: {g: p.tolist() for g, p in perms.items()}
                           for i, perms in mine.items()}):
        merged.update({int(i): {g: torch.tensor(p) for g, p in perms.items()}
                       for i, perms in part.items()})
    return merged


class Progress:
    """tqdm bar over models (fractional while a chunk trains), loss and models/min."""

    def __init__(self, total: int, enabled: bool, desc: str = "zoo"):
        self.bar = None
        self.start = time.perf_counter()
        self.done = 0.0
        self.calls = 0
        if enabled and total > 0:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="model", dynamic_ncols=True,
                            mininterval=0.5,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} models "
                                       "[{elapsed}<{remaining}{postfix}]")

    def step(self, models: int, steps: int, losses: torch.Tensor):
        if self.bar is None:
            return
        # float steps of models / steps can sum past the total; tqdm then warns (clamping)
        step = max(0.0, min(models / steps, self.bar.total - self.bar.n))
        self.done += models / steps
        self.calls += 1
        self.bar.update(step)
        if self.calls % 25 == 1:  # reading the loss syncs a GPU: not every step
            rate = 60 * self.done / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"loss {float(losses.float().nanmean()):.4f}, "
                                     f"{rate:.1f} models/min", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()
