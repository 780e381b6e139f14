"""Stable hashes: the same value in every process and run (Python's `hash` is salted per process)."""

from __future__ import annotations

import hashlib
import json


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of the parts' string forms, stable across processes, runs and machines."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def content_digest(value: object) -> str:
    """32 hex digits (128 bits) of a JSON value, stable across processes, runs and machines.

    JSON keeps the structure unambiguous: ("a b", "c") and ("a", "b c") never collide.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def bytes_digest(data: bytes) -> str:
    """32 hex digits of raw bytes (an encoded image: no decoding needed)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def shard_of(key: str, num_shards: int) -> int:
    """Which of `num_shards` build jobs owns the question with this key."""
    return stable_hash("shard", key) % max(1, num_shards)
