"""The ``tlog`` command line: parse, call one function, render.  No logic lives here.

Heavy modules (matplotlib, psutil, the supervisor) are imported inside the
command that needs them, so ``tlog --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, cast

import typer
from typer.core import TyperCommand

from tlog import protocol
from tlog.settings import RUN_DEFAULTS as RUN
from tlog.store.layout import DEFAULT_LOG_DIR as LOG_DIR

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Supervise deep-learning training runs: metrics, resources, crashes, reports.")

LogDir = Annotated[Path, typer.Option("--log-dir", envvar=protocol.ENV_LOG_DIR,
                                      help="Directory holding experiments.")]
Exp = Annotated[str | None, typer.Argument(help="Experiment name or path (default: the newest).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
DEFAULT_LOG_DIR = Path(LOG_DIR)
# Upper bounds of ``tlog run``'s numbers: a week is longer than any wait worth setting (and inf or 1e20 s would
# overflow the timers: a traceback when they start), a billion more steps or restarts than any run has
WEEK_S = 7 * 86400.0
COUNT_MAX = 10**9


class Fail(Exception):
    """A user-facing error: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _RunCommand(TyperCommand):
    """Remembers whether the target came after ``--`` (a command) or not (a Python script)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        if "--scrape" in args:  # a bare --scrape takes a pattern only if it has a named group
            from tlog.supervisor.scrape import expand_cli_args

            args = expand_cli_args(args, frozenset(opt for p in self.params if p.param_type_name == "option"
                                                   and not getattr(p, "is_flag", False) for opt in p.opts))
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
    grace: Annotated[float, typer.Option(
        min=0, max=WEEK_S, help="Seconds between forwarding Ctrl-C/SIGTERM and killing.")] = RUN["grace"],
    no_instrument: Annotated[bool, typer.Option("--no-instrument",
                                                help="Do not patch torch (or argparse) in the child.")] = False,
    log_every: Annotated[int, typer.Option(
        min=0, max=COUNT_MAX, help="Captured metrics: one row every N optimizer steps with the mean loss of those N "
        "(1: every step, exact; 0: the first step, then at most every 0.5 s).")] = RUN["log_every"],
    grad_norm: Annotated[int, typer.Option(
        min=0, max=COUNT_MAX, help="Record the total gradient norm every N steps (0: off).")] = RUN["grad_norm"],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not echo the script's output.")] = False,
    panel: Annotated[bool | None, typer.Option("--panel/--no-panel", help="Live panel (default: when stdout "
                                                "is a terminal).", show_default=False)] = None,
    status_every: Annotated[float, typer.Option(
        min=0, max=WEEK_S, help="Off a terminal: seconds between status lines on stderr (0: none).")
    ] = RUN["status_every"],
    monitor_interval: Annotated[float, typer.Option(
        min=0.01, max=WEEK_S, help="Seconds between resource readings.")] = RUN["monitor_interval"],
    hang_timeout: Annotated[float | None, typer.Option(
        min=0, max=WEEK_S, help="Seconds without progress (a step, an event) after which the run is declared "
        "hung: its stacks are dumped (faulthandler), it is stopped and the restart policy applies.  Default: "
        "calibrated by the run (30 min before the first step, then 10 x the slowest step, at least 5 min; see "
        "README).  "
        "0: off.", show_default=False)] = None,
    restart_mode: Annotated[str, typer.Option("--restart", help="'never' or 'on-failure'.")] = RUN["restart"],
    max_restarts: Annotated[int, typer.Option(
        min=0, max=COUNT_MAX, help="Restarts allowed with --restart on-failure.")] = RUN["max_restarts"],
    restart_on: Annotated[str | None, typer.Option(
        help="Categories worth a restart, comma-separated, or 'all' (default: the transient ones: "
        "memory,network,device,system).", show_default=False)] = None,
    backoff: Annotated[float, typer.Option(
        min=0, max=WEEK_S, help="Seconds before the first restart; doubles each time.")] = RUN["backoff"],
    backoff_max: Annotated[float, typer.Option(
        min=0, max=WEEK_S, help="Cap on the delay between restarts, in seconds.")] = RUN["backoff_max"],
    resume_arg: Annotated[str | None, typer.Option(
        help="Arguments appended on restarts only, e.g. '--resume {checkpoint}' ({step} also works).",
        show_default=False)] = None,
    checkpoint_glob: Annotated[str | None, typer.Option(
        help="Resume from the newest file matching this glob (default: the newest checkpoint the run "
        "announced).", show_default=False)] = None,
    scrape: Annotated[list[str] | None, typer.Option(
        "--scrape", metavar="[REGEX]", show_default=False,
        help="Read metrics from output lines (for programs tlog cannot hook): alone, key: value and key=value "
        "pairs of numbers; with REGEX (repeatable), the named groups of your pattern, e.g. "
        "'loss (?P<loss>\\S+)'; groups step/epoch/batch set the position. Default: off.")] = None,
    nproc_per_node: Annotated[str | None, typer.Option(
        "--nproc-per-node", "--nproc_per_node", show_default=False,
        help="Distributed: run SCRIPT under torchrun with this many workers on this node (or gpu, cpu, auto); "
        "every rank is recorded.")] = None,
    nnodes: Annotated[str | None, typer.Option("--nnodes", show_default=False, help="torchrun: number of "
                                               "nodes, N or MIN:MAX (default 1).")] = None,
    node_rank: Annotated[int | None, typer.Option("--node-rank", "--node_rank", show_default=False,
                                                  help="torchrun: this node's rank (0..N-1).")] = None,
    rdzv_endpoint: Annotated[str | None, typer.Option("--rdzv-endpoint", "--rdzv_endpoint", show_default=False,
                                                      help="torchrun: rendezvous HOST:PORT.")] = None,
    rdzv_backend: Annotated[str | None, typer.Option("--rdzv-backend", "--rdzv_backend", show_default=False,
                                                     help="torchrun: rendezvous backend (c10d, static...).")] = None,
    rdzv_id: Annotated[str | None, typer.Option("--rdzv-id", "--rdzv_id", show_default=False,
                                                help="torchrun: job id (default: the experiment name).")] = None,
    master_addr: Annotated[str | None, typer.Option("--master-addr", "--master_addr", show_default=False,
                                                    help="torchrun: static rendezvous address.")] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", "--master_port", show_default=False,
                                                    help="torchrun: static rendezvous port.")] = None,
    notify: Annotated[list[str] | None, typer.Option(
        "--notify", metavar="CMD", show_default=False, help="Shell command run when the run ends or restarts "
        f"(repeatable), with {', '.join(protocol.NOTIFY_ENV.values())} in its environment; at most 10 s.")] = None,
    notify_url: Annotated[list[str] | None, typer.Option(
        "--notify-url", metavar="URL", show_default=False, help="Webhook POSTed the same fields as JSON plus a "
        "one-line 'text' (Slack, Discord, Teams incoming webhooks); repeatable.")] = None,
    export_live: Annotated[str | None, typer.Option(
        "--export", metavar="tensorboard:DIR", show_default=False, help="Write TensorBoard event files into DIR "
        "as the run goes (needs tlog[tensorboard]).")] = None,
    keep_secrets: Annotated[bool, typer.Option(
        "--keep-secrets", help="Store the values of arguments and settings named like credentials (--api-key, "
        "--token, password...) as given; by default the stored command and config show them as ***.")] = False,
) -> None:
    """Run a training script (or any command) under tlog's supervision."""
    from tlog.store.layout import ExperimentError
    from tlog.supervisor.launch import LaunchError
    from tlog.supervisor.options import RunOptions
    from tlog.supervisor.restart import RestartPolicy, check_template
    from tlog.supervisor.scrape import compile_patterns
    from tlog.supervisor.session import prepare
    from tlog.supervisor.torchrun import dist_options

    target = target or []
    raw = ctx.meta.get("tlog_args", [])
    is_command = bool(target) and len(raw) > len(target) and raw[-len(target) - 1] == "--"
    if not target:
        raise Fail("nothing to run: tlog run SCRIPT [ARGS]... or tlog run -- CMD [ARGS]...", 2)
    try:
        policy = RestartPolicy.parse(restart_mode, max_restarts, restart_on, backoff, backoff_max)
        check_template(resume_arg)
        compile_patterns(p for p in scrape or () if p)
        if export_live is not None:
            from tlog.export import ExportError, exporter
            from tlog.export.live import parse

            try:
                export_live = str(parse(export_live))
                exporter("tensorboard")
            except ExportError as exc:
                raise ValueError(str(exc)) from None
        dist = dist_options(nproc_per_node, nnodes, node_rank, rdzv_endpoint, rdzv_backend, rdzv_id, master_addr,
                            master_port, is_command=is_command, name=name)
    except ValueError as exc:
        raise Fail(str(exc), 2) from None
    opts = RunOptions(target=tuple(target), is_command=is_command, name=name, log_dir=str(log_dir),
                      grace=grace, instrument=not no_instrument, quiet=quiet, panel=panel,
                      status_every=status_every, monitor_interval=monitor_interval, hang_timeout=hang_timeout,
                      restart_policy=policy, resume_arg=resume_arg, checkpoint_glob=checkpoint_glob,
                      log_every=log_every, grad_norm=grad_norm, scrape=tuple(scrape or ()),
                      settings=_settings().saved(), dist=dist, notify=tuple(notify or ()),
                      notify_url=tuple(notify_url or ()), export_live=export_live, keep_secrets=keep_secrets)
    try:
        session = prepare(opts)
    except LaunchError as exc:
        raise Fail(str(exc), exc.exit_code) from None
    except ExperimentError as exc:
        raise Fail(str(exc), 2) from None
    raise typer.Exit(session.run())


@app.command()
def summary(exp: Exp = None, log_dir: LogDir = DEFAULT_LOG_DIR, as_json: AsJson = False) -> None:
    """Status, duration, steps, throughput, metrics (last and best), resources, checkpoints, errors, config."""
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
    phase: Annotated[str | None, typer.Option("--phase", "-p", help="Only failures in this phase.")] = None,
    traceback: Annotated[bool, typer.Option("--traceback", "-t", help="Print the full traceback.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Every experiment in the log dir.")] = False,
    as_json: AsJson = False,
) -> None:
    """The classified failures of a run (or of every run with --all): cause, phase, attempt, recovery."""
    from tlog.report import ReportError, filter_errors, load_errors
    from tlog.views import tables

    dirs = _experiments(log_dir) if show_all else [_resolve(exp, log_dir)]
    try:
        rows = filter_errors([err for d in dirs for err in load_errors(d)], category, phase)
    except ReportError as exc:
        raise Fail(str(exc), 2) from None
    if as_json:
        _print_json(rows)
    else:
        tables.print_errors(rows, show_experiment=show_all, traceback=traceback)


@app.command()
def plot(
    exps: Annotated[list[str] | None, typer.Argument(help="Experiments to overlay (default: the newest).",
                                                     show_default=False)] = None,
    log_dir: LogDir = DEFAULT_LOG_DIR,
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="Metric to draw (repeatable; its "
                                                     "validation twin comes along). Default: all.",
                                                     show_default=False)] = None,
    smooth: Annotated[float, typer.Option(min=0.0, max=0.999, help="Smoothing weight, 0 for none "
                                          "(TensorBoard's debiased EMA).")] = 0.6,
    x: Annotated[str, typer.Option("--x", help="x axis: step, epoch or time.")] = "step",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (.png, .svg or .pdf; "
                                                 "default: <exp>/plots/training_progress.png).")] = None,
    ranks: Annotated[str | None, typer.Option("--ranks", show_default=False, help="Distributed runs: one curve "
                                              "per rank, 'all' or a comma list (0,3). Default: rank 0's.")] = None,
) -> None:
    """Draw metrics (validation on the same axes), memory, errors and restarts; several runs overlaid."""
    from tlog.views.plot import PlotError, PlotOptions, parse_ranks, write_plot

    plot_config = _settings()["plot_config"]
    dirs = [_resolve(e, log_dir) for e in exps] if exps else [_resolve(None, log_dir)]
    try:
        opts = PlotOptions(metrics=metric, smoothing=smooth, x=x, figure_size=plot_config["figure_size"],
                           dpi=plot_config["dpi"], save_format=plot_config["save_format"],
                           ranks=None if ranks is None else parse_ranks(ranks))
        path = write_plot(dirs, output, opts)
    except PlotError as exc:
        raise Fail(str(exc), 2) from None
    for note in opts.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"plot written to {path}")


@app.command()
def compare(
    exps: Annotated[list[str], typer.Argument(help="Two or more experiments.", show_default=False)],
    log_dir: LogDir = DEFAULT_LOG_DIR,
    as_json: AsJson = False,
) -> None:
    """Configuration differences and final/best metrics of several runs, side by side."""
    from tlog.report import compare as compare_runs
    from tlog.views import tables

    if len(exps) < 2:
        raise Fail("compare needs at least two experiments", 2)
    result = compare_runs([_resolve(e, log_dir) for e in exps])
    if as_json:
        _print_json(result)
    else:
        tables.print_compare(result)


@app.command("classify")
def classify_cmd(
    source: Annotated[str, typer.Argument(help="A file holding a traceback or a whole log "
                                               "(Slurm output, a paste); - reads stdin.")],
    as_json: AsJson = False,
) -> None:
    """Diagnose a traceback or log from anywhere: category, phase, transient or not, cause, evidence."""
    from tlog.views.diagnosis import classify_command

    raise typer.Exit(classify_command(source, as_json=as_json))


@app.command()
def watch(exp: Exp = None, log_dir: LogDir = DEFAULT_LOG_DIR,
          refresh: Annotated[float, typer.Option(help="Panel refreshes per second.")] = 4.0) -> None:
    """The live panel of a run started elsewhere, from its experiment directory, until it ends."""
    from rich.console import Console

    from tlog.views.watch import watch_experiment

    raise typer.Exit(watch_experiment(_resolve(exp, log_dir), Console(), refresh_hz=refresh))


@app.command("ls")
def list_runs(
    pattern: Annotated[str | None, typer.Argument(help="Only names matching this glob (or containing it).",
                                                  show_default=False)] = None,
    log_dir: LogDir = DEFAULT_LOG_DIR,
    status: Annotated[str | None, typer.Option("--status", "-s", help="Only runs with this status "
                                               "('restarted': any run that restarted).")] = None,
    as_json: AsJson = False,
) -> None:
    """Experiments in the log dir, newest first: status, start, duration, steps, best loss, errors."""
    from tlog.report import ReportError, list_summaries
    from tlog.store.layout import ExperimentError
    from tlog.views import tables

    try:
        rows = list_summaries(log_dir, status=status, pattern=pattern)
    except (ReportError, ExperimentError) as exc:
        raise Fail(str(exc), 2) from None
    if as_json:
        _print_json(rows)
    else:
        tables.print_list(rows)


@app.command("export")
def export_cmd(
    exps: Annotated[list[str] | None, typer.Argument(help="Experiments (default: the newest).",
                                                     show_default=False)] = None,
    to: Annotated[str, typer.Option("--to", help="parquet, tensorboard or mlflow.")] = "parquet",
    out: Annotated[str | None, typer.Option("--out", "-o", show_default=False, help="Folder (parquet, "
                                            "tensorboard; default tlog_export/<target>) or MLflow tracking URI "
                                            "(default sqlite:///mlflow.db).")] = None,
    log_dir: LogDir = DEFAULT_LOG_DIR,
    every: Annotated[bool, typer.Option("--all", help="Every experiment in the log dir.")] = False,
) -> None:
    """Write runs out as Parquet tables, TensorBoard event files or MLflow runs; again replaces, never duplicates."""
    from tlog.export import ExportError, export

    named: list[str | None] = list(exps or []) or [None]
    dirs = _experiments(log_dir) if every else [_resolve(e, log_dir) for e in named]
    try:
        for place in export(dirs, to, out):
            typer.echo(f"exported to {place}")
    except ExportError as exc:
        raise Fail(str(exc), 2) from None


config_app = typer.Typer(no_args_is_help=True, help="Settings files: tlog.toml or [tool.tlog] in pyproject.toml.")
app.add_typer(config_app, name="config")


@config_app.command("init")
def config_init(
    path: Annotated[Path, typer.Argument(help="File to write.")] = Path("tlog.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a starter tlog.toml with the defaults, ready to edit."""
    from tlog.settings import ConfigError, init

    try:
        typer.echo(f"wrote {init(path, force)}")
    except (ConfigError, OSError) as exc:
        raise Fail(str(exc), 2) from None


@config_app.command("show")
def config_show(as_json: AsJson = False) -> None:
    """The effective settings and where each comes from (CLI options still override them)."""
    from tlog.settings import effective
    from tlog.views import tables

    result = effective(_settings())
    if as_json:
        _print_json(result)
    else:
        tables.print_settings(result)


def _resolve(exp: str | None, log_dir: Path) -> Path:
    from tlog.store.layout import ExperimentError, resolve

    try:
        return resolve(exp, log_dir)
    except ExperimentError as exc:
        raise Fail(str(exc), 2) from None


def _experiments(log_dir: Path) -> list[Path]:
    from tlog.store.layout import ExperimentError, list_experiments

    try:
        return list_experiments(log_dir)
    except ExperimentError as exc:
        raise Fail(str(exc), 2) from None


def _settings():  # -> tlog.settings.Settings
    from tlog.settings import ConfigError, load

    try:
        return load()
    except ConfigError as exc:
        raise Fail(str(exc), 2) from None


def _option_defaults(command: typer.core.TyperGroup) -> dict:
    """Settings files as click's default_map: below the command line and the environment, above defaults.

    A broken settings file stops every command with one line, except ``config`` (to fix or show it) and help.
    """
    from tlog.settings import ConfigError, option_defaults

    try:
        return option_defaults(_settings(), command.commands["run"].params)
    except (Fail, ConfigError) as exc:
        if sys.argv[1:2] == ["config"] or "--help" in sys.argv:
            return {}
        raise Fail(str(exc), 2) from None


def _print_json(obj: object) -> None:
    sys.stdout.write(protocol.dumps(obj).decode() + "\n")


def main() -> None:
    """Entry point: user errors become one line on stderr, never a Python traceback."""
    if os.environ.get(protocol.ENV_SUPERVISED) == "1":  # started by a script that another tlog run supervises
        from tlog.supervisor.launch import leave_outer_run

        leave_outer_run()
    try:
        command = typer.main.get_command(app)
        code = command.main(default_map=_option_defaults(cast(typer.core.TyperGroup, command)),
                            standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.TyperException as exc:  # a bad option or value: one line, like every other error
        message = exc.format_message()
        if "\n" in message:  # bare ``tlog``: the help
            sys.stderr.write(message + "\n")
            sys.exit(exc.exit_code)
        _die(message, exc.exit_code)
    except typer.Abort:
        _die("interrupted", 130)
    except Fail as exc:
        _die(str(exc), exc.code)
    except KeyboardInterrupt:
        _die("interrupted", 130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:  # a log dir that cannot be read, created or written: which path, and why
        if os.environ.get(protocol.ENV_DEBUG):
            raise
        _die(f"{exc.filename}: {exc.strerror or exc}" if exc.filename else
             f"internal error: {exc!r} (set {protocol.ENV_DEBUG}=1 for the traceback)", 1)
    except Exception as exc:  # the last line of defence against tracebacks
        if os.environ.get(protocol.ENV_DEBUG):
            raise
        _die(f"internal error: {exc!r} (set {protocol.ENV_DEBUG}=1 for the traceback)", 1)


def _die(message: str, code: int) -> None:
    sys.stderr.write(f"tlog: error: {message}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
