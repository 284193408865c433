"""Processes a test started, found through /proc, so it can check they all ended."""

from __future__ import annotations

from pathlib import Path

Proc = tuple[int, int]
"""(pid, start time in clock ticks): a pid alone may be reused once the process ended."""


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live pid, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> list[Proc]:
    """Every live process below root (children, their children, ...)."""
    children: dict[int, list[Proc]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append((int(entry.name), st[1]))
    found: list[Proc] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def is_alive(proc: Proc) -> bool:
    """The same process (pid and start time) still exists and is not a zombie."""
    pid, started = proc
    st = _stat(pid)
    if st is None or st[1] != started:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
