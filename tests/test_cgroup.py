"""The attempt's cgroup v2 at its boundary: a directory tree standing in for ``/sys/fs/cgroup`` (the kernel's
files as plain files), so the code path runs on any host; tests/test_tree.py checks the real one where the host
has a writable v2 hierarchy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tlog.supervisor import launch, limits, proctree
from tlog.supervisor.cgroup import RunCgroup
from tlog.supervisor.guardian import _pkg_dir

KERNEL_FILES = {"cgroup.procs": "", "cgroup.kill": "", "cgroup.events": "populated 0\nfrozen 0\n",
                "memory.current": "1048576\n", "memory.max": "4194304\n", "memory.stat": "inactive_file 0\n",
                "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"}


def fake_cgroup(path: Path) -> RunCgroup:
    path.mkdir(parents=True)
    for name, text in KERNEL_FILES.items():
        (path / name).write_text(text)
    return RunCgroup(path)


def test_the_child_enters_and_everything_listed_is_the_runs_and_is_killed(tmp_path: Path) -> None:
    group = fake_cgroup(tmp_path / "tlog-1-1")
    proc = launch.spawn(launch.ChildSpec(("true",), dict(os.environ)), group)
    proc.communicate(timeout=30)
    assert (group.path / "cgroup.procs").read_text() == "0", "the child wrote itself in before exec"
    foreign_session = subprocess.Popen(["sleep", "60"], start_new_session=True)  # in no session of the run
    try:
        (group.path / "cgroup.procs").write_text(f"{foreign_session.pid}\n")
        tree = proctree.RunTree()
        tree.cgroup = group
        assert foreign_session.pid in tree.scan()
        assert foreign_session.pid in tree.kill()
        assert foreign_session.wait(5) == -signal.SIGKILL
        assert (group.path / "cgroup.kill").read_text() == "1"
    finally:
        foreign_session.kill()
        foreign_session.wait()
    scope = limits.MemoryScope(2, (group.path,))
    assert scope.limit() == (4 << 20, "cgroup v2") and scope.oom_kills() == 1, "the run's own memory and OOM kills"
    (group.path / "tlog-2-1" / "tlog-3-1").mkdir(parents=True)  # nested runs' cgroups, left by a kill
    group.remove()
    assert not (group.path / "tlog-2-1").exists()


def test_the_guardian_kills_the_cgroup_when_tlog_is_gone(tmp_path: Path) -> None:
    code = f"import sys; sys.path.insert(0, {_pkg_dir()!r}); from tlog.supervisor import guardian; guardian.main()"
    for name, end in (("gone", b""), ("ended", b"end\n")):
        group = fake_cgroup(tmp_path / name)
        subprocess.run([sys.executable, "-S", "-c", code], input=b"cgroup " + bytes(group.path) + b"\n" + end,
                       check=True, timeout=30)
        assert (group.path / "cgroup.kill").read_text() == ("" if end else "1"), name


def test_where_no_cgroup_can_be_made_none_is_and_nothing_is_left(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in ("plain", "session-3.scope"):  # not a cgroup filesystem; a systemd unit that did not delegate
        base = tmp_path / name
        base.mkdir()
        (base / "cgroup.procs").write_text("")
        (base / f"tlog-{dead.pid}-1").mkdir()  # a dead tlog's, left empty
        assert RunCgroup.create(1, base) is None
        expected = ["cgroup.procs"] if name == "plain" else ["cgroup.procs", f"tlog-{dead.pid}-1"]
        assert sorted(p.name for p in base.iterdir()) == expected, "stale removed where tlog may divide"
