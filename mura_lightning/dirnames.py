"""Folder names made from overrides: sweep jobs (`<n>_<overrides>`), search trials and Optuna studies.

A name holds letters, digits, `.`, `_` and `-` only, so a path through it passes unquoted in a shell and as a
Hydra override (`ckpt_path=...`). Overrides are written `key-value` and joined by `__`; a name keeps whole
overrides only, at most MAX_DIRNAME_LENGTH characters, and when any is left out it ends in `__` and a hash of all
of them, so two names cut short stay distinct. A sweep's job names start with the overrides that differ between
its jobs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence

DROPPED_CHARS = re.compile(r"[\[\]{}()'\"+~]")  # list brackets, quotes, the + and ~ of added and deleted keys
UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")  # anything a shell or a Hydra override would need quoted
MAX_DIRNAME_LENGTH = 120
HASH_LENGTH = 8  # hex digits of the hash that ends a name cut short
ITEM_SEP = "__"
KEY_VALUE_SEP = "-"
EMPTY_DIRNAME = "defaults"


def override_key(override: str) -> str:
    """The key of an override line (`key=value`, `+key=value`, `++key=value`, `~key`), without + and ~."""
    return override.partition("=")[0].lstrip("+~")


def _safe(text: str) -> str:
    return UNSAFE_RUN.sub("_", DROPPED_CHARS.sub("", text)).strip("._-")


def _item(override: str) -> str:
    """One override as `key-value` in safe characters."""
    key, _, value = override.partition("=")
    return KEY_VALUE_SEP.join(part for part in (_safe(key), _safe(value)) if part)


def overrides_hash(overrides: Sequence[str]) -> str:
    """A short hash of a set of overrides, the same in any order and on any machine."""
    text = "\n".join(sorted(overrides))
    return hashlib.blake2b(text.encode(), digest_size=HASH_LENGTH // 2).hexdigest()


def dirname(overrides: Sequence[str], max_length: int = MAX_DIRNAME_LENGTH) -> str:
    """A folder name for overrides (`key=value` lines), in the order given: whole `key-value` items joined by
    `__` up to `max_length` characters; when any is left out, `__<hash of all of them>` ends the name."""
    items = [item for item in map(_item, overrides) if item]
    full = ITEM_SEP.join(items)
    if len(full) <= max_length and len(items) == len(overrides):
        return full or EMPTY_DIRNAME
    digest = overrides_hash(overrides)
    budget = max_length - len(ITEM_SEP) - len(digest)
    kept: list[str] = []
    for item in items:
        if len(ITEM_SEP.join([*kept, item])) > budget:
            break
        kept.append(item)
    return ITEM_SEP.join([*kept, digest])


def sorted_overrides(overrides: Sequence[str], exclude_keys: Collection[str] = ()) -> list[str]:
    """The overrides but those of `exclude_keys`, sorted by key (as Hydra's override_dirname)."""
    kept = [override for override in overrides if override_key(override) not in exclude_keys]
    return sorted(kept, key=lambda override: (override_key(override), override))


def sweep_dirnames(jobs: Sequence[Sequence[str]], exclude_keys: Collection[str] = ()) -> list[str]:
    """`<n>_<name>` for each job of a sweep (n: its number in the sweep): the overrides whose values differ
    between the jobs first, then those they share, each group sorted by key; `exclude_keys` left out."""
    kept = [sorted_overrides(job, exclude_keys) for job in jobs]
    differ = {override_key(override) for job in kept for override in job if any(override not in o for o in kept)}
    names = []
    for number, job in enumerate(kept):
        ordered = [o for o in job if override_key(o) in differ] + [o for o in job if override_key(o) not in differ]
        names.append(f"{number}_{dirname(ordered)}")
    return names
