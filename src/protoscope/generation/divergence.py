"""Non-finite losses caught without host synchronisation: tracked on the device, read at the logging interval."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import DivergenceError


class DivergenceWatch(nn.Module):
    """Per loss term, the first step and row whose loss became non-finite (buffers on the module's device).

    :meth:`watch` updates them after every step with no host synchronisation; :meth:`packet` packs
    them with the loss sums and counts of a step into one tensor (to be gathered from every process);
    :meth:`read` checks the gathered packets and returns the loss means over all rows.
    """

    def __init__(self, term_names: Sequence[str]) -> None:
        super().__init__()
        self.term_names = list(term_names)
        n = len(self.term_names)
        self.register_buffer("first_bad_step", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("first_bad_row", torch.full((n,), -1, dtype=torch.long))
        self._slots: dict[tuple[tuple[str, ...], torch.device], torch.Tensor] = {}

    def _slot_index(self, names: tuple[str, ...]) -> torch.Tensor:
        device = self.first_bad_step.device
        index = self._slots.get((names, device))
        if index is None:
            index = torch.tensor([self.term_names.index(n) for n in names], device=device)
            self._slots[(names, device)] = index
        return index

    def watch(self, terms: Mapping[str, torch.Tensor], step: int, row_ids: torch.Tensor) -> None:
        """Remember, per term, the first step and row (of ``row_ids``) with a non-finite loss."""
        slots = self._slot_index(tuple(terms))
        bad = ~torch.isfinite(torch.stack([v.detach() for v in terms.values()]))  # [terms, rows]
        row = row_ids[bad.int().argmax(1)]  # the first bad row of each term
        known = self.first_bad_step[slots]
        fresh = bad.any(1) & (known < 0)
        self.first_bad_step[slots] = torch.where(fresh, step, known)
        self.first_bad_row[slots] = torch.where(fresh, row, self.first_bad_row[slots])

    def packet(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Loss sums and row counts of ``terms`` and the divergence records, as one float64 tensor."""
        n = len(self.term_names)
        device = self.first_bad_step.device
        sums = torch.zeros(n, dtype=torch.float64, device=device)
        counts = torch.zeros(n, dtype=torch.float64, device=device)
        if terms:
            slots = self._slot_index(tuple(terms))
            values = torch.stack([v.detach() for v in terms.values()]).double()
            sums[slots] = values.sum(1)
            counts[slots] = float(values.shape[1])
        return torch.cat([sums, counts, self.first_bad_step.double(), self.first_bad_row.double()])

    def read(self, packets: torch.Tensor, describe: Callable[[int, int, str], str]) -> tuple[dict[str, float], int]:
        """The loss means over all rows of the gathered ``packets`` (``loss/<term>``, ``loss/total``) and
        the number of rows; raises :class:`DivergenceError` with ``describe(step, row, term)`` for the
        earliest non-finite loss of any process. The one host synchronisation."""
        n = len(self.term_names)
        table = packets.reshape(-1, 4, n).tolist()
        bad = [(int(r[2][k]), int(r[3][k]), k) for r in table for k in range(n) if r[2][k] >= 0]
        if bad:
            step, row, k = min(bad)
            raise DivergenceError(describe(step, row, self.term_names[k]))
        total_sum = [sum(r[0][k] for r in table) for k in range(n)]
        total_count = [sum(r[1][k] for r in table) for k in range(n)]
        rows = int(max(total_count))
        metrics = {f"loss/{name}": total_sum[k] / total_count[k] for k, name in enumerate(self.term_names)
                   if total_count[k] > 0}
        if rows > 0:
            metrics["loss/total"] = sum(total_sum) / rows
        return metrics, rows


def divergence_message(rows: Sequence[Any], steps_per_chunk: int, num_chunks: int, step: int, row: int,
                       term: str) -> str:
    """Where a loss became non-finite (step within its chunk, row, class, seed) and what to change."""
    chunk, local = divmod(step, steps_per_chunk)
    where = f" (chunk {chunk + 1} of {num_chunks})" if num_chunks > 1 else ""
    r = rows[row]
    return (f"loss term {term!r} became non-finite at step {local}{where}, row {row} "
            f"({r.describe()}, seed index {r.seed}). Lower optimizer.lr, lower that "
            "term's weight, or use param=fourier; outputs written before this point are kept.")
