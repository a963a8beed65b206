"""Conversations' KV caches kept between turns, so that a follow-up costs only its own tokens.

After an answer, the worker keeps the KV cache of its prompt and answer (`Kept`), keyed by the
exact token ids it holds and the content keys of the media in them, under the client's scope:
another client never hits (its first-token time would tell it what someone else sent). A new
request reuses the longest prefix it shares with a kept entry of its client, cut back to the
start of the first image or video that differs (two different pictures of one size give the
same placeholder tokens) and to at least one token left to run; only the media after that
point are encoded again.

Positions: Qwen-VL's M-RoPE positions depend on every image and video before a token, so each
request's `position_ids` are computed from its full sequence and every grid (`mrope_positions`)
and passed to `generate`, which then never reads the model's shared `rope_deltas` (the last
request's, maybe another user's).

The kept caches live where the model is and are bounded in bytes (least recently used go
first); dropping them is always safe. Only full-attention layers (`DynamicLayer`) can be cut
back to a prefix: a model with other layers (linear attention) has no prefix cache.
(Recipe checked against cold runs on tiny checkpoints whose attention was sharpened so that
wrong positions change the tokens; tests/test_prefix_cache.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

VISION_TOKEN_TYPES = (1, 2)  # mm_token_type_ids of image and video placeholder tokens


def supports_prefix_cache(cache: DynamicCache) -> bool:
    """Whether every layer of this model's cache can be cut back to a prefix."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of each layer: [batch, heads, positions, head size]."""
    layers = []
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys is not None
        assert layer.values is not None
        layers.append((layer.keys, layer.values))
    return layers


def from_tensors(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A DynamicCache over the given (keys, values) per layer, without copying them."""
    cache = DynamicCache()
    cache.layers = []
    cache.layer_class_to_replicate = None
    for keys, values in layers:
        layer = DynamicLayer()
        layer.keys, layer.values = keys, values
        layer.device, layer.is_initialized = keys.device, True
        cache.layers.append(layer)
    return cache


def cropped(cache: DynamicCache, length: int) -> DynamicCache:
    """A new cache holding the first `length` positions of `cache` (views: no copy; `cache`
    itself stays as it is, since DynamicLayer never writes in place)."""
    return from_tensors([(k[:, :, :length], v[:, :, :length]) for k, v in tensors(cache)])


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes of the storage the cache keeps alive."""
    storages = {}
    for pair in tensors(cache):
        for tensor in pair:
            storage = tensor.untyped_storage()
            storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def vision_blocks(mm_token_type_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of image or video placeholder tokens of a one-row input."""
    types = mm_token_type_ids[0].tolist()
    blocks: list[tuple[int, int]] = []
    i = 0
    while i < len(types):
        end = i + 1
        if types[i] in VISION_TOKEN_TYPES:
            while end < len(types) and types[end] == types[i]:
                end += 1
            blocks.append((i, end))
        i = end
    return blocks


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False)
class Kept:
    """A kept KV cache: `ids` are exactly the tokens whose keys and values it holds."""

    scope: str
    ids: list[int]
    media_keys: list[Hashable]  # one per image or video in `ids`, in order
    cache: DynamicCache
    size: int = 0  # bytes
    used: float = field(default_factory=time.monotonic)


def reusable_length(
    kept: Kept, ids: Sequence[int], blocks: Sequence[tuple[int, int]], keys: Sequence[Hashable]
) -> int:
    """How many leading positions of `ids` can come from `kept` (see the module docstring)."""
    length = common_prefix(kept.ids, ids)
    for (start, _), new, old in zip(blocks, keys, kept.media_keys, strict=False):
        if new != old:
            length = min(length, start)
            break
    for start, end in blocks:  # an image or video is reused whole or not at all
        if start < length < end:
            length = start
    return min(length, len(ids) - 1)


class PrefixCache:
    """The kept caches of every client, bounded in bytes, least recently used dropped first."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._entries: list[Kept] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        with self._lock:
            return sum(entry.size for entry in self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(
        self,
        scope: str,
        ids: Sequence[int],
        blocks: Sequence[tuple[int, int]],
        keys: Sequence[Hashable],
    ) -> tuple[DynamicCache | None, int]:
        """The longest reusable prefix among `scope`'s entries: a cache cut to it, and its
        length (None, 0 when nothing is reusable)."""
        with self._lock:
            best, length = None, 0
            for entry in self._entries:
                if entry.scope != scope:
                    continue
                reusable = reusable_length(entry, ids, blocks, keys)
                if reusable > length:
                    best, length = entry, reusable
            if best is None:
                return None, 0
            best.used = time.monotonic()
            return cropped(best.cache, length), length

    def keep(self, entry: Kept) -> None:
        """Adds an entry (its own compact copy), dropping the entries it extends and, beyond the
        capacity, the least recently used."""
        entry.cache = _compact(entry.cache)
        entry.size = cache_bytes(entry.cache)
        if entry.size > self.capacity:
            return
        with self._lock:
            self._entries = [e for e in self._entries if not _extends(entry, e)]
            self._entries.append(entry)
            self._entries.sort(key=lambda e: e.used)
            total = sum(e.size for e in self._entries)
            while total > self.capacity:
                total -= self._entries.pop(0).size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _extends(new: Kept, old: Kept) -> bool:
    """Whether `new` holds all that `old` holds (the same client, `old`'s tokens a prefix)."""
    return (
        new.scope == old.scope
        and len(new.ids) >= len(old.ids)
        and new.ids[: len(old.ids)] == old.ids
        and new.media_keys[: len(old.media_keys)] == old.media_keys
    )


def _compact(cache: DynamicCache) -> DynamicCache:
    """A copy with contiguous tensors: the storage of cut-away positions can be freed."""
    return from_tensors(
        [(k.contiguous().clone(), v.contiguous().clone()) for k, v in tensors(cache)]
    )


def media_slices(inputs: dict[str, Any], blocks: Sequence[tuple[int, int]], start: int) -> dict:
    """The pixel values and grids of the images and videos that begin at or after `start` (the
    others are in the cache: passing them again would not match the tokens to encode)."""
    types = inputs["mm_token_type_ids"][0]
    out: dict[str, Any] = {}
    for type_id, pixels_key, grid_key in (
        (1, "pixel_values", "image_grid_thw"),
        (2, "pixel_values_videos", "video_grid_thw"),
    ):
        grid = inputs.get(grid_key)
        if grid is None:
            continue
        starts = [s for s, _ in blocks if int(types[s]) == type_id]
        first_new = next((k for k, s in enumerate(starts) if s >= start), len(starts))
        if first_new == len(starts):
            continue
        offset = int(grid[:first_new].prod(-1).sum())  # patches of the items before
        out[pixels_key] = inputs[pixels_key][offset:]
        out[grid_key] = grid[first_new:]
        if type_id == 2 and inputs.get("second_per_grid_ts") is not None:
            out["second_per_grid_ts"] = torch.as_tensor(inputs["second_per_grid_ts"])[first_new:]
    return out


def mrope_positions(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The (3, batch, length) M-RoPE positions of the whole input, from every grid."""
    kwargs = {
        "mm_token_type_ids": inputs["mm_token_type_ids"],
        "image_grid_thw": inputs.get("image_grid_thw"),
        "video_grid_thw": inputs.get("video_grid_thw"),
        "attention_mask": inputs.get("attention_mask"),
    }
    if inputs.get("second_per_grid_ts") is not None:  # Qwen2.5-VL's videos
        kwargs["second_per_grid_ts"] = torch.as_tensor(inputs["second_per_grid_ts"])
    positions, _ = model.model.get_rope_index(inputs["input_ids"], **kwargs)
    return positions
