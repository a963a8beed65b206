"""app.lru: the bounded LRU behind the media caches and the per-client memories of app.chat."""

from __future__ import annotations

from app.lru import Lru


def test_values_are_dropped_least_recently_used_first_by_their_sizes():
    cache = Lru(capacity=10)
    cache.put("a", "A", 4)
    cache.put("b", "B", 4)
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("c", "C", 4)  # 12 > 10: b goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    assert cache.size == 8


def test_a_value_larger_than_the_capacity_is_not_kept_and_a_default_is_given():
    cache = Lru(capacity=3)
    cache.put("big", "X", 4)
    assert cache.get("big", "none") == "none" and cache.size == 0
    for n in range(5):  # size 1 each: bounded by count
        cache.put(n, n)
    assert [cache.get(n) for n in range(5)] == [None, None, 2, 3, 4]
