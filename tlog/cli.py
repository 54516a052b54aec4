"""The ``tlog`` command line: parse, call one function, render.  No logic lives here.

Heavy modules (matplotlib, psutil, the supervisor) are imported inside the
command that needs them, so ``tlog --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Supervise deep-learning training runs: metrics, resources, crashes, reports.")

LogDir = Annotated[Path, typer.Option("--log-dir", envvar="TLOG_LOG_DIR",
                                      help="Directory holding experiments.")]
Exp = Annotated[str | None, typer.Argument(help="Experiment name or path (default: the newest).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
DEFAULT_LOG_DIR = Path("training_logs")


class Fail(Exception):
    """A user-facing error: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _RunCommand(TyperCommand):
    """Remembers whether the target came after ``--`` (a command) or not (a Python script)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["tlog_args"] = list(args)
        return super().parse_args(ctx, args)


@app.command(cls=_RunCommand, context_settings={"allow_interspersed_args": False,
                                                "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    target: Annotated[list[str] | None, typer.Argument(
        help="SCRIPT [ARGS]... (run with this Python), or -- CMD [ARGS]... (any program).",
        show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Experiment name "
                                             "(default: <script stem>-<YYYYmmdd-HHMMSS>).")] = None,
    log_dir: LogDir = DEFAULT_LOG_DIR,
    grace: Annotated[float, typer.Option(help="Seconds between forwarding Ctrl-C/SIGTERM and killing.")] = 10.0,
    no_instrument: Annotated[bool, typer.Option("--no-instrument",
                                                help="Do not patch torch in the child.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not echo the script's output.")] = False,
    panel: Annotated[bool | None, typer.Option("--panel/--no-panel", help="Live panel (default: when stdout "
                                                "is a terminal).", show_default=False)] = None,
    status_every: Annotated[float, typer.Option(help="Off a terminal: seconds between status lines "
                                                     "on stderr (0: none).")] = 30.0,
    monitor_interval: Annotated[float, typer.Option(help="Seconds between resource readings.")] = 0.5,
) -> None:
    """Run a training script (or any command) under tlog's supervision."""
    from tlog.store.layout import ExperimentError
    from tlog.supervisor.launch import LaunchError
    from tlog.supervisor.session import RunOptions, Session

    target = target or []
    raw = ctx.meta.get("tlog_args", [])
    is_command = bool(target) and len(raw) > len(target) and raw[-len(target) - 1] == "--"
    if not target:
        raise Fail("nothing to run: tlog run SCRIPT [ARGS]... or tlog run -- CMD [ARGS]...", 2)
    opts = RunOptions(target=tuple(target), is_command=is_command, name=name, log_dir=str(log_dir),
                      grace=grace, instrument=not no_instrument, quiet=quiet, panel=panel,
                      status_every=status_every, monitor_interval=monitor_interval)
    session = Session(opts)
    try:
        session.prepare()
    except LaunchError as exc:
        raise Fail(str(exc), exc.exit_code) from None
    except ExperimentError as exc:
        raise Fail(str(exc), 2) from None
    raise typer.Exit(session.run())


@app.command()
def summary(exp: Exp = None, log_dir: LogDir = DEFAULT_LOG_DIR, as_json: AsJson = False) -> None:
    """Status, steps, metrics (last and best), resources, checkpoints and errors of a run."""
    from tlog.report import load_summary
    from tlog.views import tables

    result = load_summary(_resolve(exp, log_dir))
    if as_json:
        _print_json(result)
    else:
        tables.print_summary(result)


@app.command()
def errors(
    exp: Exp = None,
    log_dir: LogDir = DEFAULT_LOG_DIR,
    category: Annotated[str | None, typer.Option("--category", "-c", help="Only this category.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Every experiment in the log dir.")] = False,
    as_json: AsJson = False,
) -> None:
    """The classified failures of a run (or of every run with --all)."""
    from tlog.report import load_errors
    from tlog.store.layout import list_experiments
    from tlog.views import tables

    dirs = list_experiments(log_dir) if show_all else [_resolve(exp, log_dir)]
    rows = [err for d in dirs for err in load_errors(d) if category is None or err.get("category") == category]
    if as_json:
        _print_json(rows)
    else:
        tables.print_errors(rows, show_experiment=show_all)


@app.command()
def plot(
    exp: Exp = None,
    log_dir: LogDir = DEFAULT_LOG_DIR,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (PNG, SVG or PDF; "
                                                 "default: <exp>/plots/training_progress.png).")] = None,
) -> None:
    """Draw loss, accuracy, learning rate and errors against the step."""
    from tlog.views.plot import plot_experiment

    exp_dir = _resolve(exp, log_dir)
    path = plot_experiment(exp_dir, output)
    typer.echo(f"plot written to {path}")


@app.command()
def watch(exp: Exp = None, log_dir: LogDir = DEFAULT_LOG_DIR,
          refresh: Annotated[float, typer.Option(help="Panel refreshes per second.")] = 4.0) -> None:
    """The live panel of a run started elsewhere, from its experiment directory, until it ends."""
    from rich.console import Console

    from tlog.views.watch import watch_experiment

    raise typer.Exit(watch_experiment(_resolve(exp, log_dir), Console(), refresh_hz=refresh))


@app.command("ls")
def list_runs(log_dir: LogDir = DEFAULT_LOG_DIR, as_json: AsJson = False) -> None:
    """Experiments in the log dir, newest first."""
    from tlog.report import list_summaries
    from tlog.views import tables

    rows = list_summaries(log_dir)
    if as_json:
        _print_json(rows)
    else:
        tables.print_list(rows)


def _resolve(exp: str | None, log_dir: Path) -> Path:
    from tlog.store.layout import ExperimentError, resolve

    try:
        return resolve(exp, log_dir)
    except ExperimentError as exc:
        raise Fail(str(exc), 2) from None


def _print_json(obj: object) -> None:
    from tlog import protocol

    sys.stdout.write(protocol.dumps(obj).decode() + "\n")


def main() -> None:
    """Entry point: user errors become one line on stderr, never a Python traceback."""
    try:
        app()
    except Fail as exc:
        _die(str(exc), exc.code)
    except KeyboardInterrupt:
        _die("interrupted", 130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:  # the last line of defence against tracebacks
        if os.environ.get("TLOG_DEBUG"):
            raise
        _die(f"internal error: {exc!r} (set TLOG_DEBUG=1 for the traceback)", 1)


def _die(message: str, code: int) -> None:
    sys.stderr.write(f"tlog: error: {message}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
