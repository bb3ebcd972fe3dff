"""Task filters: which episodes a pipeline variant keeps, selected by instruction.

Each filter is a named function `instruction -> bool` registered in `TASK_FILTERS`; the
`*_all.py` and `*_pick*.py` scripts are the same code with a different filter name. Adding a
variant is one small function with `@register_filter("name")`.
"""

from __future__ import annotations

from collections.abc import Callable

from rt1.errors import RT1Error

TaskFilter = Callable[[str], bool]
TASK_FILTERS: dict[str, TaskFilter] = {}


def register_filter(name: str):
    def register(fn: TaskFilter) -> TaskFilter:
        if name in TASK_FILTERS:
            raise ValueError(f"task filter '{name}' is already registered")
        TASK_FILTERS[name] = fn
        return fn

    return register


class UnknownFilterError(RT1Error, KeyError):
    """No task filter of that name."""


def get_filter(name: str) -> TaskFilter:
    try:
        return TASK_FILTERS[name]
    except KeyError:
        raise UnknownFilterError(f"unknown task filter '{name}'; known: {sorted(TASK_FILTERS)}") from None


@register_filter("all")
def keep_all(instruction: str) -> bool:
    return True


@register_filter("pick")
def is_pick_object(instruction: str) -> bool:
    """The original's pick-object rule: 'pick' in the instruction and 'from' not in it."""
    return "pick" in instruction and "from" not in instruction
