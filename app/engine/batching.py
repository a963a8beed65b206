"""Padded batch generation for several requests at once, each still streamed and stopped alone.

Requests are encoded one by one (batch of 1) in their callers' threads; the model worker
collates the ones that share sampling settings into one left-padded batch. Per row, a
stopping criterion ends the row on its own Stop, disconnect or length limit, and the batch
streamer forwards each row's tokens to that request's streamer and ends it as soon as the row
is done, so a finished or stopped request leaves without disturbing the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

# Inputs with one entry per prompt token: left-padded. Everything else (pixel values, grids,
# video timing) is one entry per image/video, concatenated in row order.
SEQUENCE_KEYS = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0}


class Row(Protocol):
    """What the batch needs of a request: its streamer, stop flag and length limit."""

    streamer: Any
    stop: Any

    @property
    def max_new_tokens(self) -> int: ...


def collate(inputs: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """One left-padded batch from single-prompt model inputs (Qwen2-VL supports left padding)."""
    if len(inputs) == 1:
        return dict(inputs[0])
    length = max(item["input_ids"].shape[1] for item in inputs)
    batch: dict[str, Any] = {}
    for key in dict.fromkeys(k for item in inputs for k in item):
        present = [item[key] for item in inputs if key in item]
        if key in SEQUENCE_KEYS:
            fill = SEQUENCE_KEYS[key]
            fill = pad_token_id if fill is None else fill
            batch[key] = torch.cat([left_pad(t, length, fill) for t in present])
        elif isinstance(present[0], torch.Tensor):
            batch[key] = torch.cat(present)
        else:
            batch[key] = [value for values in present for value in values]
    return batch


def left_pad(tensor: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    """`tensor` (rows, tokens) with `fill` before each row, up to `length` tokens."""
    pad = torch.full(
        (tensor.shape[0], length - tensor.shape[1]), fill, dtype=tensor.dtype, device=tensor.device
    )
    return torch.cat([pad, tensor], dim=1)


class StopRows(StoppingCriteria):
    """Per-row stop: the request's Stop / disconnect, or its own max_new_tokens."""

    def __init__(self, rows: Sequence[Row], prompt_length: int) -> None:
        self.rows = rows
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> Any:
        generated = input_ids.shape[1] - self.prompt_length
        done = [row.stop.is_set() or generated >= row.max_new_tokens for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class BatchStreamer(BaseStreamer):
    """Sends each row's new token to that request's streamer; ends a row once it is done."""

    def __init__(self, rows: Sequence[Row], eos_token_ids: set[int]) -> None:
        self.rows = rows
        self.eos = eos_token_ids
        self.done = [False] * len(rows)
        self.prompt_seen = False
        self.generated = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate sends the prompts first, then one token per row
            self.prompt_seen = True
            for row, prompt in zip(self.rows, value, strict=True):
                row.streamer.put(prompt)  # each request's streamer skips its prompt
            return
        self.generated += 1
        for index, (row, token) in enumerate(zip(self.rows, value.flatten().tolist(), strict=True)):
            if self.done[index]:
                continue
            row.streamer.put(torch.tensor([token]))
            if token in self.eos or row.stop.is_set() or self.generated >= row.max_new_tokens:
                self._finish(index)

    def end(self) -> None:
        for index in range(len(self.rows)):
            if not self.done[index]:
                self._finish(index)

    def _finish(self, index: int) -> None:
        self.done[index] = True
        self.rows[index].streamer.end()
