"""Memory cgroups for `stchat bench --cap`: run a process as if on a machine that small.

A budget (`--memory`) is a promise the runtime keeps about its own allocations; a machine with
1 GiB of RAM also holds the page cache (the model files being read) in that same gigabyte. A
memory cgroup limited to SIZE makes the kernel hold the process to SIZE of RSS and page cache
together, and evicting the model's files from the page cache first means every byte must come
from disk again, as on a freshly booted device. Linux only; cgroup v1 (`memory.limit_in_bytes`)
and v2 (`memory.max`) are both handled. The group is created beside or below this process's
own group and removed afterwards. `$STCHAT_CGROUP_ROOT` replaces `/sys/fs/cgroup` (tests).
"""
from __future__ import annotations

import itertools
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stchat.exitcodes import StchatError

_names = itertools.count()


class CgroupUnavailable(StchatError):
    """No writable memory cgroup: the cap cannot be enforced here."""


def cgroup_root() -> Path:
    return Path(os.environ.get("STCHAT_CGROUP_ROOT") or "/sys/fs/cgroup")


def _memory_hierarchy(root: Path) -> tuple[int, Path] | None:
    """(version, mount directory) of the hierarchy holding the memory controller, if any."""
    for mount in (root, root / "unified"):  # v2 alone, or v2 beside v1 ("hybrid")
        controllers = mount / "cgroup.controllers"
        if controllers.is_file() and "memory" in controllers.read_text().split():
            return 2, mount
    if (root / "memory" / "memory.limit_in_bytes").is_file():
        return 1, root / "memory"
    return None


def _own_group(version: int) -> str:
    """This process's group path inside the memory hierarchy ("/" when unknown)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:  # "4:memory:/a/b" (v1) or "0::/a/b" (v2)
        _, controllers, path = line.split(":", 2)
        if (version == 1 and "memory" in controllers.split(",")) or (version == 2 and controllers == ""):
            return path
    return "/"


def _parent_dir(version: int, mount: Path) -> Path:
    """Where the new group goes: below our own group when we may write there (v1), or at the
    nearest ancestor that hands the memory controller to its children (v2: a group holding
    processes cannot have children with controllers, so never our own group)."""
    own = mount / _own_group(version).lstrip("/")
    if version == 1:
        return own if own.is_dir() and os.access(own, os.W_OK) else mount
    for candidate in (own, *own.parents):
        if candidate == mount or mount not in candidate.parents:
            break
        control = candidate / "cgroup.subtree_control"
        if candidate != own and control.is_file() and "memory" in control.read_text().split():
            return candidate
    control = mount / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        control.write_text("+memory")  # the root may enable it for its children (no process rule there)
    return mount


@dataclass
class MemoryCgroup:
    path: Path
    version: int
    limit: int

    def join(self, pid: int | None = None) -> None:
        """Move a process (default: the calling one) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid or os.getpid()))

    def peak(self) -> int | None:
        """Highest RSS + page cache the group reached, in bytes (None if the kernel lacks it)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.path / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remove(self) -> None:
        for _ in range(50):  # the last process may take a moment to leave
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        self.path.rmdir()


def create(limit: int) -> MemoryCgroup:
    """A new memory cgroup limited to `limit` bytes of RSS + page cache (no swap beyond it)."""
    root = cgroup_root()
    found = _memory_hierarchy(root)
    if found is None:
        raise CgroupUnavailable(f"--cap needs a Linux memory cgroup (v1 {root}/memory or v2 with the memory "
                                f"controller), and none is mounted at {root}")
    version, mount = found
    try:
        path = _parent_dir(version, mount) / f"stchat-bench-{os.getpid()}-{next(_names)}"
        path.mkdir()
    except OSError as error:
        raise CgroupUnavailable(f"cannot create a memory cgroup under {mount}: {error.strerror or error} "
                                "(--cap needs root or a delegated cgroup)") from None
    group = MemoryCgroup(path, version, limit)
    try:
        if version == 1:
            (path / "memory.limit_in_bytes").write_text(str(limit))
            if (path / "memory.memsw.limit_in_bytes").is_file():  # memory + swap: no swap either
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (path / "memory.max").write_text(str(limit))
            if (path / "memory.swap.max").is_file():
                (path / "memory.swap.max").write_text("0")
    except OSError as error:
        group.remove()
        raise CgroupUnavailable(f"cannot set the limit of {path}: {error.strerror or error}") from None
    return group


def run(command: list, limit: int, evict_paths=()) -> tuple[subprocess.CompletedProcess, int | None]:
    """Run `command` to completion (output captured) inside a new group of `limit` bytes, with
    `evict_paths` dropped from the page cache first; returns it and the group's peak bytes."""
    group = create(limit)
    try:
        evict(evict_paths)
        child = subprocess.run(command, capture_output=True, text=True, preexec_fn=group.join)
        return child, group.peak()
    finally:
        group.remove()


def current_limit() -> int | None:
    """The memory limit of the group this process runs in, as the kernel enforces it (None: no limit)."""
    found = _memory_hierarchy(cgroup_root())
    if found is None:
        return None
    version, mount = found
    group = mount / _own_group(version).lstrip("/")
    try:
        text = (group / ("memory.limit_in_bytes" if version == 1 else "memory.max")).read_text().strip()
    except OSError:  # our group is outside this mount's view (a container's namespace)
        return None
    limit = None if text == "max" else int(text)
    return None if limit is None or limit >= 2**62 else limit


def evict(paths) -> None:
    """Drop the files from the page cache (written back first), so the next read comes from disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
