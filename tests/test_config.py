"""Settings files: precedence (CLI > env > tlog.toml > pyproject > defaults), init, errors, a run's saved settings."""

from __future__ import annotations

import json
import re
import textwrap
import tomllib
from pathlib import Path

import pytest
from conftest import Runner, clean_env
from test_reports import run_events, write_run

from tlog import settings as config


def experiments_seen(runner: Runner, *args: str, cwd: Path | None = None, **env: str) -> list[str]:
    old, runner.cwd = runner.cwd, cwd or runner.cwd
    try:
        res = runner.run("ls", "--json", *args, env=clean_env(**env))
    finally:
        runner.cwd = old
    assert res.returncode == 0, res.stderr
    return [row["experiment"] for row in json.loads(res.stdout)]


def test_precedence_cli_env_toml_pyproject_defaults(runner: Runner) -> None:
    root = runner.cwd
    for name in ("training_logs", "pp_logs", "toml_logs", "env_logs", "cli_logs"):
        write_run(root / name, f"in-{name}", run_events(2))
    assert experiments_seen(runner) == ["in-training_logs"]
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.tlog]\nlog_dir = "pp_logs"\n'
                                         '[tool.tlog.plot_config]\nsmoothing = 0.3\n')
    assert experiments_seen(runner) == ["in-pp_logs"]
    (root / "tlog.toml").write_text('log_dir = "toml_logs"\n')
    sub = root / "src" / "deep"
    sub.mkdir(parents=True)
    assert experiments_seen(runner, cwd=sub) == ["in-toml_logs"], "found upward; relative to the file"
    assert experiments_seen(runner, TLOG_LOG_DIR=str(root / "env_logs")) == ["in-env_logs"]
    assert experiments_seen(runner, "--log-dir", "cli_logs", TLOG_LOG_DIR=str(root / "env_logs")) == ["in-cli_logs"]
    shown = json.loads(runner.run("config", "show", "--json").stdout)
    assert shown["files"] == [str(root / "pyproject.toml"), str(root / "tlog.toml")]
    assert shown["settings"]["log_dir"] == {"value": str(root / "toml_logs"), "source": str(root / "tlog.toml")}
    assert shown["settings"]["plot_config.smoothing"] == {"value": 0.3, "source": str(root / "pyproject.toml")}
    assert shown["settings"]["plot_config.dpi"] == {"value": 100, "source": "default"}


def test_config_init_writes_the_defaults_and_refuses_to_overwrite(runner: Runner) -> None:
    """What a run really uses (its recorded options) is the same with the starter file as without it."""
    (runner.cwd / "t.py").write_text("print('ok')\n")

    def used(name: str) -> dict:
        assert runner.run("run", "-q", "--name", name, "t.py").returncode == 0
        options = json.loads((runner.exp(name) / "training_config.json").read_text())["tlog"]
        options["log_dir"] = str((runner.cwd / options["log_dir"]).resolve())  # the file's own dir or ours
        return {k: v for k, v in options.items() if k not in ("name", "settings")} | {
            "settings": {k: options["settings"][k] for k in ("monitoring_thresholds", "plot_config")}}

    before = used("plain")
    res = runner.run("config", "init")
    assert res.returncode == 0 and res.stdout == "wrote tlog.toml\n"
    written = (runner.cwd / "tlog.toml").read_text()
    assert written.startswith("# tlog settings") and "[monitoring_thresholds]" in written
    # one table of defaults: tlog run --help shows them, config init writes them, a run records them
    policy = before["restart_policy"]
    recorded = {key: before[key] for key in ("grace", "log_every", "grad_norm", "status_every", "monitor_interval")}
    recorded |= {"restart": "on-failure" if policy["on_failure"] else "never", "max_restarts": policy["max_restarts"],
                 "backoff": policy["backoff_s"], "backoff_max": policy["backoff_max_s"]}
    help_text = " ".join(runner.run("run", "--help").stdout.split())
    shown = {key: re.search(rf"--{key.replace('_', '-')} <\w+( range)?> .*?\[default: ([^;\]]+)", help_text)[2]
             for key in recorded}
    assert shown == {key: str(value) for key, value in recorded.items()}
    assert tomllib.loads(written)["run"] == recorded == config.RUN_DEFAULTS
    assert config.load(runner.cwd).values["run"]["monitor_interval"] == before["monitor_interval"]
    assert used("starter") == before, "the starter changes nothing until it is edited (no limits turned on)"
    (runner.cwd / "tlog.toml").write_text("log_dir = 'mine'\n")
    res = runner.run("config", "init")
    assert res.returncode == 2 and res.stderr == "tlog: error: tlog.toml exists; use --force to overwrite it\n"
    assert (runner.cwd / "tlog.toml").read_text() == "log_dir = 'mine'\n"
    assert runner.run("config", "init", "--force").returncode == 0
    assert (runner.cwd / "tlog.toml").read_text() == written


@pytest.mark.parametrize(("text", "message"), [
    ("log_dir = [unclosed\n", "malformed TOML: "),
    ("[plot_config]\nsmoothing = 1.5\n", "plot_config.smoothing must be in [0, 1)"),
    ("[run]\ngrace = 'soon'\n", "[run] grace = 'soon': "),
    ("[run]\ngracee = 3\n", "[run] has no option 'gracee' (valid: backoff, backoff_max, "),
    ("colour = 'red'\n", "unknown setting 'colour' (valid: log_dir, run, monitoring_thresholds, "),
    ("[plot_config]\ndpi = -5\n", "plot_config.dpi must be between 10 and 1200"),
    ("[plot_config]\nfigure_size = [1000, 8]\n", "plot_config.figure_size must be [width, height] in inches, "),
    (b"\x7fELF\x02\x01\x01\x00\xd0a\xff\xfe", "not a TOML file (not UTF-8 text)"),
])
def test_bad_settings_are_one_line_errors(runner: Runner, text: str | bytes, message: str) -> None:
    (runner.cwd / "tlog.toml").write_bytes(text if isinstance(text, bytes) else text.encode())
    res = runner.run("summary")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"tlog: error: {runner.cwd / 'tlog.toml'}: {message}")
    assert len(res.stderr.splitlines()) == 1


def test_run_uses_and_saves_the_settings(runner: Runner) -> None:
    (runner.cwd / "tlog.toml").write_text(textwrap.dedent("""\
        [run]
        grace = 3
        monitor-interval = 0.2
        [monitoring_thresholds]
        memory_usage_mb = 1
        [metric_modes]
        loss = "max"
    """))
    body = 'for i in 1 2 3; do echo "@tlog {\\"step\\": $i, \\"loss\\": 0.$i}"; done; sleep 1'
    res = runner.run("run", "--name", "cfg", "--", "bash", "-c", body)
    assert res.returncode == 0, res.stderr
    saved = json.loads((runner.exp("cfg") / "training_config.json").read_text())["tlog"]
    assert (saved["grace"], saved["monitor_interval"]) == (3.0, 0.2)
    assert saved["settings"]["metric_modes"] == {"loss": "max"}
    assert saved["settings"]["files"] == [str(runner.cwd / "tlog.toml")]
    loss = json.loads(runner.run("summary", "cfg", "--json").stdout)["metrics"]["loss"]
    assert (loss["mode"], loss["best"], loss["best_step"]) == ("max", 0.3, 3)
    warnings = [e["data"] for e in runner.events("cfg") if e["kind"] == "warning"]
    assert any(w.get("metric") == "rss_mb" and w.get("threshold") == 1.0 for w in warnings), warnings
    res = runner.run("run", "--name", "cli", "--grace", "5", "--", "true")
    assert json.loads((runner.exp("cli") / "training_config.json").read_text())["tlog"]["grace"] == 5.0
