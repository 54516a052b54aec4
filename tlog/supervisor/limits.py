"""The memory limit that actually binds the child, and the kernel's OOM-kill counter.

A training run inside a container or a systemd slice is killed at its cgroup's
limit, long before the host runs out of RAM, so "RSS as a share of physical
memory" alone would say 30% right up to the OOM kill.  We therefore resolve the
child's cgroup from ``/proc/<pid>/cgroup`` and ``/proc/self/mountinfo`` (the
mount's root field makes this work in containers without a cgroup namespace),
walk from that cgroup up to the mount point (a limit set on a parent slice
binds the children too) and take the smallest finite limit.  A limit at or above
physical RAM cannot bind first, so the physical total wins then ("physical").

Usage inside a cgroup is the kernel's "working set": usage minus inactive page
cache, the part the kernel cannot reclaim before it OOM-kills.  Counting the
cache would report almost no headroom whenever a dataset is being read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

_V2_FILES = {"limit": "memory.max", "usage": "memory.current", "inactive": "inactive_file"}
_V1_FILES = {"limit": "memory.limit_in_bytes", "usage": "memory.usage_in_bytes",
             "inactive": "total_inactive_file"}


@dataclass(frozen=True)
class MemoryScope:
    """The cgroup directories accounting the child's memory, its own first, then its ancestors.

    ``version`` is 2, 1, or None when no memory cgroup could be found (then the
    physical RAM is the only limit).
    """

    version: int | None
    dirs: tuple[Path, ...]

    @property
    def _files(self) -> dict[str, str]:
        return _V2_FILES if self.version == 2 else _V1_FILES

    def limit(self) -> tuple[int, str]:
        """The smallest limit that applies, in bytes, with where it comes from."""
        limit, source, _ = self.status()
        return limit, source

    def status(self) -> tuple[int, str, int]:
        """(limit, source, headroom) in bytes from one read of each file, as the sampler needs all three.

        Headroom is what the child can still allocate before the first limit on the
        chain, or the host's available memory, runs out.
        """
        vm = psutil.virtual_memory()
        limits = self._finite_limits(vm.total)
        room = vm.available
        for d, value in limits:
            used = self._working_set(d)
            if used is not None:
                room = min(room, value - used)
        if limits:
            return min(value for _, value in limits), f"cgroup v{self.version}", max(room, 0)
        return vm.total, "physical", max(room, 0)

    def oom_kills(self) -> int | None:
        """The cgroup's OOM-kill counter: v2 ``memory.events`` (hierarchical), v1 ``memory.oom_control``."""
        if not self.dirs:
            return None
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _read_keyed(self.dirs[0] / name).get("oom_kill")

    def _finite_limits(self, physical: int) -> list[tuple[Path, int]]:
        """Every limit on the chain below physical RAM; a cgroup's limit binds all its descendants."""
        found = []
        for d in self.dirs:
            value = _read_int(d / self._files["limit"])
            if value is not None and value < physical:
                found.append((d, value))
        return found

    def _working_set(self, d: Path) -> int | None:
        usage = _read_int(d / self._files["usage"])
        if usage is None:
            return None
        inactive = _read_keyed(d / "memory.stat").get(self._files["inactive"], 0)
        return max(usage - inactive, 0)


def memory_scope(pid: int | None = None) -> MemoryScope:
    """Resolve once per child: the paths stay valid while the process lives, the values are re-read."""
    proc = f"/proc/{pid if pid is not None else 'self'}/cgroup"
    # A child that already exited inherited our cgroup, so ours is the best answer left.
    memberships = _memberships(proc) or _memberships("/proc/self/cgroup")
    mounts = _cgroup_mounts()
    v2 = _chain(memberships.get("2"), mounts.get("2"))
    if any((d / "memory.max").exists() for d in v2):
        return MemoryScope(2, tuple(d for d in v2 if (d / "memory.max").exists()))
    v1 = _chain(memberships.get("memory"), mounts.get("memory"))
    if v1:
        return MemoryScope(1, v1)
    return MemoryScope(None, ())


def unified_dir(pid: int | None = None) -> Path | None:
    """``pid``'s (default: this process's) cgroup directory in the unified (v2) hierarchy, where it is
    mounted here; None on a v1-only host or when it is not visible."""
    memberships = _memberships(f"/proc/{pid if pid is not None else 'self'}/cgroup")
    chain = _chain(memberships.get("2"), _cgroup_mounts().get("2"))
    return chain[0] if chain else None


def memory_limit(pid: int | None = None) -> tuple[int, str]:
    """The memory limit binding ``pid`` (default: this process) in bytes, and its source label."""
    return memory_scope(pid).limit()


def oom_kill_count(pid: int | None = None) -> int | None:
    """How many OOM kills the kernel counted in ``pid``'s cgroup; None when it keeps no counter.

    The counter covers the whole cgroup (usually the supervisor's too), so compare a
    reading taken before launch with one taken after the exit.
    """
    return memory_scope(pid).oom_kills()


def _memberships(path: str) -> dict[str, str]:
    """Map "2" (the unified hierarchy) and each v1 controller name to the cgroup path."""
    out: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, cgpath = parts
        if hierarchy == "0" and not controllers:
            out["2"] = cgpath
        for name in controllers.split(","):
            if name:
                out[name] = cgpath
    return out


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """Map "2" and v1 controller names to (root within the hierarchy, mount point)."""
    out: dict[str, tuple[str, str]] = {}
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        root, mountpoint = fields[3], _unescape(fields[4])
        if extra[0] == "cgroup2":
            out.setdefault("2", (root, mountpoint))
        elif extra[0] == "cgroup":
            for name in extra[2].split(","):
                out.setdefault(name, (root, mountpoint))
    return out


def _chain(cgpath: str | None, mount: tuple[str, str] | None) -> tuple[Path, ...]:
    """The cgroup's directory and its ancestors up to the mount point; empty when not visible here."""
    if cgpath is None or mount is None:
        return ()
    root, mountpoint = mount
    rel = os.path.relpath(cgpath, root) if root != "/" else cgpath.lstrip("/")
    if rel.startswith(".."):
        return ()
    top = Path(mountpoint)
    d = top / rel if rel not in ("", ".") else top
    if not d.is_dir():
        return ()
    chain = [d]
    while d != top:
        d = d.parent
        chain.append(d)
    return tuple(chain)


def _unescape(field: str) -> str:
    """mountinfo escapes spaces and friends as octal (\\040)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_keyed(path: Path) -> dict[str, int]:
    """Parse "key value" lines (memory.stat, memory.events, memory.oom_control)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out
