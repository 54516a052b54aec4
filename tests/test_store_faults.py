"""A store that cannot be written never harms the training (a file size limit, RLIMIT_FSIZE: EFBIG, handled
like ENOSPC; the child's own done-file and output are the truth), and a log dir that cannot be created, a
bad option or a corrupt experiment is one clear line or one line of ``ls``, never an internal error."""

from __future__ import annotations

import json
import resource
import subprocess

import pytest

from tests.conftest import Runner, script

LIMIT = 48 << 10


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def test_full_disk_keeps_the_child_running_and_its_output_flowing(runner: Runner) -> None:
    done = runner.cwd / "done"
    proc = runner.popen("run", "--name", "full", "--log-every", "1", script("fills_disk.py"), str(done),
                        preexec_fn=_limit)
    out, err = proc.communicate(timeout=120)
    assert done.read_text() == "done", err
    assert proc.returncode == 0, err
    assert out.count("line ") == 1500 and "line 1500 " in out, "every line reached the terminal"
    assert "Traceback" not in err, err
    failed = [line for line in err.splitlines() if "cannot write" in line]
    assert len(failed) == 1 and "full/" in failed[0] and "File too large" in failed[0], err
    exp = runner.exp("full")
    assert not [p.name for p in exp.rglob("*.tmp")], "no temporary file left behind"
    assert (exp / "events.jsonl").stat().st_size <= LIMIT


def test_log_dir_that_cannot_be_created_is_one_line_naming_it(runner: Runner) -> None:
    (runner.cwd / "afile").write_text("not a directory")
    res = runner.run("run", "--log-dir", "afile/logs", "--", "true")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == ["tlog: error: afile/logs: Not a directory"]


def test_a_log_dir_that_is_a_file_is_one_line_for_every_report(runner: Runner) -> None:
    (runner.cwd / "afile").write_text("not a directory")
    for args in (("ls",), ("errors", "--all"), ("export", "--all")):
        res = runner.run(*args, "--log-dir", "afile")
        assert (res.returncode, res.stderr) == (2, "tlog: error: log dir afile is not a directory\n"), args


def test_read_only_log_dir_is_one_line_naming_it(runner: Runner) -> None:
    ro = runner.cwd / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        res = runner.run("run", "--log-dir", str(ro / "logs"), "--", "true")
        assert res.returncode == 1
        assert res.stderr.strip().splitlines() == [f"tlog: error: {ro / 'logs'}: Read-only file system"]
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_out_of_range_option_is_refused(runner: Runner) -> None:
    res = runner.run("run", "--monitor-interval", "-1", "--", "true")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "tlog: error: Invalid value for '--monitor-interval': Input should be greater than or equal to 0.01"]
    res = runner.run("run", "--grace", "inf", "--", "true")  # a timer that long raised when Ctrl-C started it
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "tlog: error: Invalid value for '--grace': Input should be less than or equal to 604800"]
    assert not runner.log_dir.exists()


def test_one_corrupt_experiment_does_not_stop_ls(runner: Runner) -> None:
    assert runner.run("run", "--name", "good", "--", "true").returncode == 0
    for name, summary in (("bad1", '{"status": 5, "steps": "x", "started": "zz"}'), ("bad2", "[1, 2]")):
        (runner.log_dir / name).mkdir()
        (runner.log_dir / name / "training_summary.json").write_text(summary)
        (runner.log_dir / name / "events.jsonl").write_bytes(b'{"kind": 5}\n\xff\n')
    res = runner.run("ls")
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[1:]}
    assert lines == {"good": "finished", "bad1": "unknown", "bad2": "unknown"}


def test_writing_resumes_when_space_returns_and_the_gap_is_recorded(runner: Runner) -> None:
    disk = runner.cwd / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        filler = disk / "filler"
        with open(filler, "wb") as f:  # all of it but 64 KiB
            f.write(b"x" * (192 << 10))
        go = runner.cwd / "go"
        proc = runner.popen("run", "--name", "gap", "--log-dir", str(disk), "--log-every", "1",
                            script("waits_for_space.py"), str(go))
        seen = ""
        while "cannot write" not in seen:
            line = proc.stderr.readline()
            assert line, proc.communicate(timeout=30)
            seen += line
        filler.unlink()
        go.touch()
        out, err = proc.communicate(timeout=60)
        err = seen + err
        assert proc.returncode == 0, err
        assert err.count("cannot write") == 1 and "No space left on device" in err, err
        assert "again after" in err, err
        steps = int(out.rsplit("STEPS ", 1)[1])
        events = [json.loads(line) for line in (disk / "gap" / "events.jsonl").read_text().splitlines()]
        gaps = [e["data"] for e in events if e["kind"] == "warning" and e["data"].get("metric") == "store"]
        assert len(gaps) == 1 and gaps[0]["to"] >= gaps[0]["from"]
        assert max(e["step"] for e in events if e["kind"] == "metrics") == steps, "recording resumed"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
