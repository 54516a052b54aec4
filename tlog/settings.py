"""Settings: tlog's defaults from ``tlog.toml`` or ``[tool.tlog]`` in ``pyproject.toml``.

Precedence, highest first: a command-line option, then its environment variable (``TLOG_LOG_DIR``), then
``tlog.toml``, then ``pyproject.toml``, then the built-in defaults.  Each file is the nearest one found
searching upward from the current directory (``TLOG_CONFIG`` names a tlog.toml explicitly); a pyproject
counts only when it has a ``[tool.tlog]`` table.  A relative ``log_dir`` in a file is relative to that file,
so a command run from a subdirectory of the project still finds its runs.

The command-line precedence is click's own: the file settings become the commands' ``default_map``, which
click consults only after the command line and the environment.  ``tlog run`` saves the settings it used in
training_config.json (``tlog.settings``), so a run can be repeated and its reports use its metric modes.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Any

from tlog import protocol
from tlog.store.layout import DEFAULT_LOG_DIR

FILENAME = "tlog.toml"
SECTIONS = ("run", "monitoring_thresholds", "plot_config", "metric_modes")
THRESHOLD_KEYS = ("memory_usage_mb", "gpu_memory_mb", "check_interval_seconds", "rss_fraction",
                  "headroom_fraction", "gpu_fraction", "rss_mb", "gpu_mb", "check_interval_s", "hysteresis")
PLOT_KEYS: dict[str, type | tuple[type, ...]] = {"figure_size": list, "dpi": (int, float), "save_format": str,
                                                 "smoothing": (int, float), "x": str}
MAX_INCHES, DPI_RANGE = 100, (10, 1200)  # beyond: an image of gigabytes, or matplotlib's 2**16 px per side
# ``tlog run``'s defaults, the one table that its options (and so ``tlog run --help``), ``RunOptions``, the
# restart policy and ``tlog config init`` read; a key is the option's long name, as in [run].
RUN_DEFAULTS: dict[str, Any] = {
    "grace": 10.0, "log_every": 0, "grad_norm": 0, "status_every": 30.0, "monitor_interval": 1.0,
    "restart": "never", "max_restarts": 3, "backoff": 1.0, "backoff_max": 60.0,
}
DEFAULTS: dict[str, Any] = {
    "log_dir": DEFAULT_LOG_DIR,
    "run": {},
    "monitoring_thresholds": {"memory_usage_mb": None, "gpu_memory_mb": None, "check_interval_seconds": None},
    "plot_config": {"figure_size": None, "dpi": 100, "save_format": "png", "smoothing": 0.6, "x": "step"},
    "metric_modes": {},
}
STARTER_THRESHOLDS = """
[monitoring_thresholds]  # off unless set: warn when the run's RSS or a GPU's memory passes a value (MB)
# memory_usage_mb = 16000
# gpu_memory_mb = 70000
# check_interval_seconds = 1
"""
STARTER_HEADER = """\
# tlog settings: defaults for tlog's commands (`tlog config show` prints the effective values).
# Precedence: command-line option > environment (TLOG_LOG_DIR) > tlog.toml > pyproject [tool.tlog] > defaults.
# [run]: any `tlog run` option by its long name.  [monitoring_thresholds]: when the resource monitor warns.
# [plot_config]: `tlog plot` dpi, format, smoothing (0-1), x axis (step|epoch|time) and figure_size = [w, h]
# in inches (default: 12 wide, 2.6 per panel).
# [metric_modes]: what "best" means for a metric, "min" or "max" (the default guesses from the name).

"""


class ConfigError(ValueError):
    """A malformed or invalid settings file: shown to the user as one line naming the file."""


class Settings:
    """The merged file settings, and where each value came from (by dotted key: ``run.grace``)."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str], files: list[Path]) -> None:
        self.values = values
        self.sources = sources
        self.files = files

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def saved(self) -> dict[str, Any]:
        """What a run records in training_config.json: the file settings and the files they came from."""
        return {**self.values, "files": [str(f) for f in self.files]}


def find(start: Path | None = None) -> tuple[Path | None, Path | None]:
    """The nearest tlog.toml (or $TLOG_CONFIG) and the nearest pyproject.toml with a [tool.tlog] table."""
    explicit = os.environ.get(protocol.ENV_CONFIG)
    toml_path = Path(explicit) if explicit else None
    pyproject = None
    for directory in [d := (start or Path.cwd()).resolve(), *d.parents]:
        if toml_path is None and (directory / FILENAME).is_file():
            toml_path = directory / FILENAME
        if pyproject is None and _has_tlog_table(directory / "pyproject.toml"):
            pyproject = directory / "pyproject.toml"
        if toml_path is not None and pyproject is not None:
            break
    return toml_path, pyproject


@functools.lru_cache(maxsize=4)
def load(start: Path | None = None) -> Settings:
    """Defaults, overlaid by pyproject's [tool.tlog], overlaid by tlog.toml (raises ConfigError)."""
    toml_path, pyproject = find(start)
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in DEFAULTS.items()}
    sources = {key: "default" for key in flat(values)}
    files = []
    for path, table in ((pyproject, lambda d: d.get("tool", {}).get("tlog", {})), (toml_path, lambda d: d)):
        if path is None:
            continue
        data = table(_read(path))
        validate(data, path)
        files.append(path)
        for key, value in data.items():
            if key == "log_dir":
                values[key] = str(path.parent / value)
            else:
                values[key] = {**values[key], **value}
        sources.update(dict.fromkeys(flat(data), str(path)))
    return Settings(values, sources, files)


def flat(values: dict[str, Any]) -> dict[str, Any]:
    """``{"run": {"grace": 10}}`` as ``{"run.grace": 10}``: one line per setting."""
    return {f"{key}.{k}" if isinstance(v, dict) else key: v2
            for key, v in values.items() for k, v2 in (v.items() if isinstance(v, dict) else [(key, v)])}


def effective(settings: Settings) -> dict[str, Any]:
    """Every setting with its value and source; the environment's log_dir wins over the files'."""
    rows = {key: {"value": value, "source": settings.sources.get(key, "default")}
            for key, value in flat(settings.values).items()}
    if os.environ.get(protocol.ENV_LOG_DIR):
        rows["log_dir"] = {"value": os.environ[protocol.ENV_LOG_DIR], "source": f"environment ({protocol.ENV_LOG_DIR})"}
    return {"files": [str(f) for f in settings.files], "settings": rows}


def _has_tlog_table(path: Path) -> bool:
    """Whether a pyproject.toml configures tlog; another project's broken pyproject is none of tlog's business."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "tool.tlog" in text and "tlog" in _read(path).get("tool", {})


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def validate(data: dict[str, Any], path: Path) -> None:
    """Unknown keys and wrong types, named with the file, before any command uses them."""
    for key, value in data.items():
        if key == "log_dir":
            _check(isinstance(value, str) and value, path, "log_dir must be a non-empty string")
        elif key in SECTIONS:
            _check(isinstance(value, dict), path, f"[{key}] must be a table")
        else:
            raise ConfigError(f"{path}: unknown setting {key!r} (valid: log_dir, {', '.join(SECTIONS)})")
    for key, value in data.get("monitoring_thresholds", {}).items():
        _check(key in THRESHOLD_KEYS, path, f"unknown monitoring_thresholds key {key!r} "
                                            f"(valid: {', '.join(THRESHOLD_KEYS)})")
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, path,
               f"monitoring_thresholds.{key} must be a non-negative number")
    for key, value in data.get("plot_config", {}).items():
        _check(key in PLOT_KEYS, path, f"unknown plot_config key {key!r} (valid: {', '.join(PLOT_KEYS)})")
        _check(isinstance(value, PLOT_KEYS[key]) and not isinstance(value, bool), path,
               f"plot_config.{key} has the wrong type")
    plot = data.get("plot_config", {})
    if "figure_size" in plot:
        size = plot["figure_size"]
        _check(len(size) == 2 and all(isinstance(v, (int, float)) and 0 < v <= MAX_INCHES for v in size), path,
               f"plot_config.figure_size must be [width, height] in inches, each above 0 and at most {MAX_INCHES}")
    _check(DPI_RANGE[0] <= plot.get("dpi", 100) <= DPI_RANGE[1], path,
           f"plot_config.dpi must be between {DPI_RANGE[0]} and {DPI_RANGE[1]}")
    _check(plot.get("x", "step") in ("step", "epoch", "time"), path, "plot_config.x must be step, epoch or time")
    _check(0 <= plot.get("smoothing", 0) < 1, path, "plot_config.smoothing must be in [0, 1)")
    _check(str(plot.get("save_format", "png")).lower() in ("png", "svg", "pdf"), path,
           "plot_config.save_format must be png, svg or pdf")
    for key, value in data.get("metric_modes", {}).items():
        _check(value in ("min", "max"), path, f"metric_modes.{key} must be \"min\" or \"max\"")


def _check(ok: object, path: Path, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}")


def option_defaults(settings: Settings, run_params: list[Any]) -> dict[str, dict[str, Any]]:
    """The ``default_map`` of tlog's commands: log_dir for all, [run] for ``run``, smoothing and x for ``plot``.

    ``run_params`` are the click options of ``tlog run``: a [run] key is an option's long name (``restart``,
    ``max_restarts`` or ``max-restarts``) or its parameter name, and its value is checked by the option's type.
    """
    names = _run_options(run_params)
    common = {"log_dir": settings["log_dir"]} if settings.sources["log_dir"] != "default" else {}
    run: dict[str, Any] = dict(common)
    for key, value in settings["run"].items():
        param = names.get(key.replace("-", "_"))
        source = settings.sources[f"run.{key}"]
        if param is None:
            valid = sorted({o.lstrip("-").replace("-", "_") for p in names.values() for o in p.opts
                            if o.startswith("--")})
            raise ConfigError(f"{source}: [run] has no option {key!r} (valid: {', '.join(valid)})")
        run[param.name] = _convert(param, value, source, key)
    plot = {"smooth": settings["plot_config"]["smoothing"], "x": settings["plot_config"]["x"], **common}
    commands = ("summary", "errors", "ls", "compare", "watch")
    return {"run": run, "plot": plot, **{name: dict(common) for name in commands}}


def _run_options(run_params: list[Any]) -> dict[str, Any]:
    """``tlog run``'s options by every name a [run] key may use: long name (``max_restarts``) or parameter."""
    names: dict[str, Any] = {}
    for param in run_params:
        if param.param_type_name == "option":
            names[param.name] = param
            names.update((o.lstrip("-").replace("-", "_"), param) for o in param.opts if o.startswith("--"))
    return names


def _convert(param: Any, value: Any, source: str, key: str) -> Any:
    """A [run] value through the option's own type, so a bad one fails here, as one line naming the file."""
    if isinstance(value, list) and not getattr(param, "multiple", False):
        value = ",".join(map(str, value))  # restart = ["memory", "network"] for a comma-list option
    if getattr(param, "multiple", False) and not isinstance(value, list):
        value = [value]
    try:
        if hasattr(param, "get_runtime_param"):  # typer >= 0.20 converts values itself
            return param.get_runtime_param().coerce(value, param=param, ctx=None)
        return param.type_cast_value(None, value)  # plain click
    except Exception as exc:  # noqa: BLE001 - click's BadParameter and friends: one line
        raise ConfigError(f"{source}: [run] {key} = {value!r}: {exc}") from None


def starter_text() -> str:
    """The defaults as they are, read from where they are decided (RUN_DEFAULTS, DEFAULTS); thresholds that are
    off by default are shown commented out, so a starter file changes nothing until it is edited."""
    import tomli_w

    values = {
        "log_dir": DEFAULTS["log_dir"],
        "run": dict(RUN_DEFAULTS),
        "plot_config": {k: v for k, v in DEFAULTS["plot_config"].items() if v is not None},
        "metric_modes": {"loss": "min", "accuracy": "max"},
    }
    return STARTER_HEADER + tomli_w.dumps(values) + STARTER_THRESHOLDS


def init(path: Path, force: bool = False) -> Path:
    """Write a starter tlog.toml; an existing file is kept unless ``force``."""
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; use --force to overwrite it")
    path.write_text(starter_text())
    return path
