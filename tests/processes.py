"""Process helpers shared by the tests that kill process trees (compare, Ray)."""

from __future__ import annotations

from pathlib import Path


def session_alive(sid: int) -> list[int]:
    """Pids of live (non-zombie) processes in session ``sid`` (Linux ``/proc``)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            alive.append(int(entry.name))
    return alive
