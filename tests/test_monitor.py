"""Resource monitor: real children for host memory, the fake pynvml at the library boundary for GPUs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tlog.supervisor.limits import MemoryScope, memory_limit, memory_scope, oom_kill_count
from tlog.supervisor.monitor import GPU_FIELDS, HOST_COLUMNS, Monitor, Thresholds, columns
from tlog.supervisor.nvml import NvmlGateway

FAKES = Path(__file__).parent / "fakes"
GIB = 2**30
QUIET = Thresholds(rss_fraction=None, headroom_fraction=None, gpu_fraction=None)

IDLE = "print('ready', flush=True); import time; time.sleep(60)"
ALLOC = "b = b'\\x01' * ({mb} * 2**20); " + IDLE
# A chain child -> grandchild -> great-grandchild, so only a recursive walk finds the last one;
# the two descendants allocate {mb} MB each.  The child prints their pids.
CHAIN = """
import subprocess, sys, time
level, mb, code = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
block = b'\\x01' * (mb * 2**20) if level else b''
below = ''
if level < 2:
    kid = subprocess.Popen([sys.executable, '-c', code, str(level + 1), str(mb), code],
                           stdout=subprocess.PIPE, text=True)
    below = f"{kid.pid} {kid.stdout.readline().strip()}"
print(below.strip(), flush=True)
time.sleep(60)
"""
# Grows or frees 50 MB on command, so a test decides exactly when memory crosses a line.
STEPPER = """
import sys
blocks = []
print('ready', flush=True)
for line in sys.stdin:
    if line.strip() == 'grow':
        blocks.append(b'\\x01' * (50 * 2**20))
    else:
        blocks.clear()
    print('ok', flush=True)
"""


class Child:
    """A real child in its own session, so the whole tree can be killed at teardown."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.first_line = self.proc.stdout.readline().strip()
        self.pid = self.proc.pid

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture(scope="module")
def spawn() -> Iterator:
    children: list[Child] = []

    def make(code: str, *args: str) -> Child:
        children.append(Child(code, *args))
        return children[-1]

    yield make
    for child in children:
        child.kill()


@pytest.fixture(scope="module")
def idle(spawn) -> Child:
    return spawn(IDLE)


@pytest.fixture(scope="module")
def tree(spawn) -> Child:
    return spawn(CHAIN, "0", "100", CHAIN)


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynvml not importable at all, as on a machine without nvidia-ml-py."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    import pynvml

    assert Path(pynvml.__file__).is_relative_to(FAKES)
    pynvml.configure()
    return pynvml


def monitor(pid: int, thresholds: Thresholds = QUIET, **kwargs) -> tuple[Monitor, list, list]:
    rows: list[dict] = []
    warnings: list[dict] = []
    kwargs.setdefault("window", 1)
    m = Monitor(pid, on_sample=rows.append, on_warning=warnings.append, thresholds=thresholds, **kwargs)
    return m, rows, warnings


def rss_of(pid: int) -> float:
    m, _, _ = monitor(pid)
    return max(m.sample_once()["rss_mb"] for _ in range(3))


def test_peak_rss_of_a_child_matches_what_it_allocated(spawn, idle, no_nvml) -> None:
    base = rss_of(idle.pid)
    child = spawn(ALLOC.format(mb=200))
    m, rows, _ = monitor(child.pid)
    for _ in range(3):
        m.sample_once()
    peak = m.peaks()
    assert peak["rss_peak_mb"] == pytest.approx(base + 200, rel=0.10)
    assert [p["pid"] for p in peak["rss_peak_procs"]] == [child.pid]
    assert " -c " in peak["rss_peak_procs"][0]["cmd"] and len(peak["rss_peak_procs"][0]["cmd"]) <= 80
    assert len(rows) == 3 and rows[-1]["nprocs"] == 1


def test_descendants_are_counted_with_their_memory(spawn, tree, no_nvml) -> None:
    empty_tree = spawn(CHAIN, "0", "0", CHAIN)
    base = rss_of(empty_tree.pid)
    m, _, _ = monitor(tree.pid)
    row = m.sample_once()
    assert row["nprocs"] == 3
    assert row["rss_mb"] == pytest.approx(base + 200, rel=0.10)
    breakdown = m.peaks()["rss_peak_procs"]
    descendants = {int(pid) for pid in tree.first_line.split()}
    assert len(descendants) == 2 and {p["pid"] for p in breakdown} == {tree.pid, *descendants}
    assert all(p["rss_mb"] > 100 for p in breakdown if p["pid"] in descendants)


def test_row_columns_are_stable_and_host_only_without_nvml(idle, no_nvml) -> None:
    m, _, warnings = monitor(idle.pid)
    first, second = m.sample_once(), m.sample_once()
    assert list(first) == list(HOST_COLUMNS) == columns(second)
    assert not any(key.startswith("gpu") for key in second)
    assert second["mem_limit_mb"] > 0 and second["mem_limit_source"] in {"cgroup v2", "cgroup v1", "physical"}
    assert 0 < second["headroom_mb"] <= second["mem_limit_mb"]
    assert [(w["category"], w["metric"]) for w in warnings] == [("device", "nvml")]
    assert "not importable" in warnings[0]["message"]


def test_window_row_keeps_a_spike_between_rows(spawn, no_nvml) -> None:
    child = spawn(STEPPER)
    m, rows, _ = monitor(child.pid, window=3)
    low = m.sample_once()["rss_mb"]
    child.send("grow")
    high = m.sample_once()["rss_mb"]
    child.send("free")
    assert rows == []
    last = m.sample_once()
    assert len(rows) == 1 and rows[0] == last
    assert high - low == pytest.approx(50, abs=5)
    assert last["rss_max_mb"] == high and last["rss_min_mb"] == min(low, last["rss_mb"])
    assert last["rss_mean_mb"] == pytest.approx((low + high + last["rss_mb"]) / 3)
    assert last["rss_peak_mb"] == high and last["rss_mb"] < high - 40


def test_thresholds_fire_once_per_crossing_and_rearm(spawn, no_nvml) -> None:
    child = spawn(STEPPER)
    low = rss_of(child.pid)
    m, _, warnings = monitor(child.pid, thresholds=Thresholds(rss_fraction=None, headroom_fraction=0.9999,
                                                                gpu_fraction=None, rss_mb=low + 25))
    m.sample_once()
    for command in ("grow", "grow", "free", "grow"):
        child.send(command)
        m.sample_once()
        m.sample_once()
    fired = [(w["metric"], w["category"]) for w in warnings if w["metric"] != "nvml"]
    assert fired == [("headroom_fraction", "memory"), ("rss_mb", "memory"), ("rss_mb", "memory")]
    rss_warning = next(w for w in warnings if w["metric"] == "rss_mb")
    assert rss_warning["threshold"] == low + 25 and rss_warning["value"] >= low + 25
    assert "MB" in rss_warning["message"]


def test_seed_thresholds_and_interval() -> None:
    th = Thresholds.from_seed({"memory_usage_mb": 1000, "gpu_memory_mb": 2000, "check_interval_seconds": 2,
                               "unrelated": 5})
    assert (th.rss_mb, th.gpu_mb, th.check_interval_s) == (1000.0, 2000.0, 2.0)
    assert th.rss_fraction == 0.90 and Thresholds.from_seed(None) == Thresholds()
    m, _, _ = monitor(os.getpid(), thresholds=th, nvml=NvmlGateway())
    assert m.interval == 2.0


def test_thread_stops_promptly_and_flushes_the_partial_window(idle, no_nvml) -> None:
    m, rows, _ = monitor(idle.pid, interval=30.0, window=5)
    m.start()
    time.sleep(0.2)
    began = time.monotonic()
    m.stop()
    assert time.monotonic() - began < 2.0
    assert len(rows) == 1 and len(m.recent(60)) == 2 and m.recent(0) == []
    assert rows[0]["rss_mean_mb"] > 0


def test_a_failing_sample_is_reported_once_and_skipped(idle, no_nvml) -> None:
    def broken(row: dict) -> None:
        raise RuntimeError("sink down")

    warnings: list[dict] = []
    m = Monitor(idle.pid, interval=0.02, window=1, on_sample=broken, on_warning=warnings.append,
                thresholds=QUIET)
    m.start()
    time.sleep(0.3)
    m.stop()
    failures = [w for w in warnings if w["metric"] == "sampler"]
    assert len(failures) == 1 and "sink down" in failures[0]["message"]
    assert len(m.recent(60)) > 3


def test_vanishing_processes_do_not_raise(spawn, no_nvml) -> None:
    churn = spawn("import os\nprint('ready', flush=True)\nwhile True:\n"
                  "    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n")
    m, _, warnings = monitor(churn.pid)
    counts = {m.sample_once()["nprocs"] for _ in range(200)}
    assert counts <= {1, 2} and 1 in counts
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    m.pid = gone.pid
    row = m.sample_once()
    assert (row["nprocs"], row["rss_mb"]) == (0, 0.0)
    assert [w["metric"] for w in warnings] == ["nvml"]


def test_cpu_percent_is_measured_between_samples() -> None:
    busy = Child("print('ready', flush=True)\nwhile True: pass")
    try:
        m, _, _ = monitor(busy.pid, nvml=NvmlGateway())
        m.sample_once()
        time.sleep(0.3)
        assert m.sample_once()["cpu_percent"] > 20
    finally:
        busy.kill()


def test_gpu_memory_matched_to_the_tree_processes(tree, fake_nvml) -> None:
    grandchild = int(tree.first_line.split()[-1])
    _, dev1 = fake_nvml.configure([
        fake_nvml.FakeDevice(total=80 * GIB, used=10 * GIB, util=55, temp=61, power_mw=250_500,
                             compute=[(tree.pid, 3 * GIB), (999_999, 7 * GIB)],
                             graphics=[(tree.pid, 3 * GIB)]),
        fake_nvml.FakeDevice(total=40 * GIB, used=6 * GIB, compute=[(grandchild, 2 * GIB), (999_998, GIB)],
                             unsupported={"nvmlDeviceGetPowerUsage"}),
    ])
    m, _, warnings = monitor(tree.pid)
    m.baseline()
    row = m.sample_once()
    assert columns(row) == list(row) == [*HOST_COLUMNS, *(f"gpu{i}_{f}" for i in (0, 1) for f in GPU_FIELDS)]
    gpu0 = (row["gpu0_used_mb"], row["gpu0_method"], row["gpu0_device_used_mb"])
    assert gpu0 == (3072.0, "process", 10240.0)
    assert (row["gpu0_total_mb"], row["gpu0_util"], row["gpu0_temp_c"], row["gpu0_power_w"]) == (
        81920.0, 55.0, 61.0, 250.5)
    assert (row["gpu1_used_mb"], row["gpu1_method"], row["gpu1_power_w"]) == (2048.0, "process", None)
    assert warnings == [] and fake_nvml.init_calls() == 1
    dev1.used, dev1.compute = 7 * GIB, []  # nobody on the device: the tree uses none of it
    assert (m.sample_once()["gpu1_used_mb"], m.sample_once()["gpu1_method"]) == (0.0, "process")
    assert m.peaks()["gpu"]["gpu1"]["peak_mb"] == 2048.0


def test_gpu_falls_back_to_device_minus_baseline_when_no_pid_matches(idle, fake_nvml) -> None:
    (dev,) = fake_nvml.configure([fake_nvml.FakeDevice(total=80 * GIB, used=10 * GIB)])
    m, rows, warnings = monitor(idle.pid, window=2,
                                thresholds=Thresholds(rss_fraction=None, headroom_fraction=None))
    m.baseline()
    dev.used, dev.compute = 14 * GIB, [(999_999, 4 * GIB)]
    first = m.sample_once()
    assert (first["gpu0_used_mb"], first["gpu0_method"]) == (4096.0, "device-baseline")
    dev.used = 12 * GIB
    second = m.sample_once()
    assert (second["gpu0_used_mb"], second["gpu0_max_mb"], second["gpu0_peak_mb"]) == (2048.0, 4096.0, 4096.0)
    assert rows == [second] and rows[0] is not second
    peak = m.peaks()["gpu"]["gpu0"]
    assert (peak["peak_mb"], peak["method"], peak["t"]) == (4096.0, "device-baseline", first["t"])
    assert orjson.loads(orjson.dumps(m.peaks()))["gpu"]["gpu0"]["total_mb"] == 81920.0
    for used in (75, 76, 50, 74):  # 90% of 80 GiB is 72 GiB
        dev.used = used * GIB
        m.sample_once()
    assert [(w["category"], w["metric"]) for w in warnings] == [("device", "gpu0_fraction")] * 2


def test_nvml_without_driver_warns_once_and_adds_no_columns(idle, fake_nvml) -> None:
    fake_nvml.configure(init_error=fake_nvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    m, _, warnings = monitor(idle.pid)
    m.baseline()
    rows = [m.sample_once() for _ in range(3)]
    assert all(list(r) == list(HOST_COLUMNS) for r in rows)
    assert len(warnings) == 1 and "LibraryNotFound" in warnings[0]["message"]
    assert fake_nvml.init_calls() == 1


def test_memory_limit_and_oom_counter_on_this_machine() -> None:
    limit, source = memory_limit()
    assert limit > 0 and source in {"cgroup v2", "cgroup v1", "physical"}
    assert memory_limit(os.getpid()) == (limit, source)
    scope, count = memory_scope(), oom_kill_count()
    if not scope.dirs:  # no memory cgroup: the kernel keeps no counter for us
        assert count is None and source == "physical"
        return
    counters = (scope.dirs[0] / ("memory.events" if scope.version == 2 else "memory.oom_control")).read_text()
    assert count == int(re.search(r"^oom_kill (\d+)$", counters, re.M)[1]), "the kernel's own counter, as it reads"


def _cgroup_dir(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_cgroup_v2_limit_on_a_parent_binds_with_working_set_headroom(tmp_path: Path) -> None:
    parent = _cgroup_dir(tmp_path / "slice", {"memory.max": str(GIB), "memory.current": str(GIB // 2),
                                               "memory.stat": f"anon 1\ninactive_file {GIB // 4}\n"})
    leaf = _cgroup_dir(parent / "run", {"memory.max": "max\n", "memory.current": "0",
                                        "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n"})
    scope = MemoryScope(2, (leaf, parent))
    limit, source, headroom = scope.status()
    assert (limit, source) == (GIB, "cgroup v2") == scope.limit()
    assert headroom == GIB - (GIB // 2 - GIB // 4)  # page cache that can be dropped is not "used"
    assert scope.oom_kills() == 2


def test_cgroup_v1_unlimited_means_physical(tmp_path: Path) -> None:
    oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"
    leaf = _cgroup_dir(tmp_path / "docker", {"memory.limit_in_bytes": "9223372036854771712",
                                             "memory.oom_control": oom_control})
    limit, source, headroom = MemoryScope(1, (leaf,)).status()
    assert source == "physical" and limit > headroom > 0
    assert MemoryScope(1, (leaf,)).oom_kills() == 0 and MemoryScope(None, ()).oom_kills() is None
