"""A thread-safe least-recently-used dict, bounded by the summed sizes of its values.

With the default size of 1 per value it is bounded by count. One home for the app's bounded
memories: media headers and decoded pixels (app.media), the answers' own text and the pages
chosen of each document (app.chat).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class Lru:
    """Values kept until their summed sizes pass `capacity`, the least recently used first;
    a value larger than the whole capacity is not kept."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Any, value: Any, size: int = 1) -> None:
        if size > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.size -= old[1] if old else 0
            self._items[key] = (value, size)
            self.size += size
            while self.size > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self.size -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0
