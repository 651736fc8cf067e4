"""The ``nas2deploy`` command line."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from . import __version__
from .config import RunConfig, load_toml, merge
from .errors import Nas2DeployError, UsageError

DEFAULTS = RunConfig()


def _fail(msg: str, code: int) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _stop(signum, frame):
    # a second signal must not cut short the cleanup the first one started
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextmanager
def _signals_stop_like_ctrl_c():
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, as Ctrl-C does, so every
    ``with`` and ``finally`` on the way out cleans up (staging folder, scratch folders, the
    --out lock). A signal that was ignored when the command started (nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is _stop:  # after a stop signal they stay ignored to the end
                signal.signal(sig, handler)


def handled(fn):
    """One clear line and the documented exit code instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _signals_stop_like_ctrl_c():
                return fn(*args, **kwargs)
        except Nas2DeployError as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
        except KeyboardInterrupt as exc:
            from .outdir import clear_own_scratch

            clear_own_scratch()
            by = f" by {exc}" if str(exc) else ""
            _fail(f"interrupted{by}; nothing was written", 130)
        except Exception as exc:  # a bug or an environment problem: say so in one line
            if os.environ.get("NAS2DEPLOY_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            _fail(f"unexpected {type(exc).__name__}: {first} (set NAS2DEPLOY_DEBUG=1 for the "
                  f"traceback)", 1)

    return wrapper


def _progress_factory(quiet: bool):
    """Progress bars on a terminal; where stderr is not one (CI, torchrun, nohup, a log file),
    one line per finished bar (an epoch, a stage) instead of carriage returns."""
    if not quiet and not _stderr_is_tty():
        return LineProgress
    from tqdm.auto import tqdm

    def make(total=None, desc=None):
        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                    disable=quiet, mininterval=0.5)

    return make


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """A tqdm-shaped bar that prints one line when it closes: what it counted, in how long, and
    its last postfix (loss, accuracy)."""

    def __init__(self, total=None, desc=None):
        self.total, self.desc, self.n, self.postfix = total, desc or "", 0, {}
        self.t0 = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        extra = "".join(f" {k} {v}" for k, v in self.postfix.items())
        click.echo(f"[nas2deploy] {self.desc}: {done} in {time.perf_counter() - self.t0:.1f} s"
                   f"{extra}", err=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nas2deploy")
def main() -> None:
    """Neural architecture search as structured pruning, to a measured deployment bundle."""


def _comma_list(ctx, param, value):
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give at least one name, comma separated")
    return items


@main.command("search-and-export")
@click.option("--method", default=DEFAULTS.method, show_default=True,
              help="Search method (see `nas2deploy methods`).")
@click.option("--space", default=None,
              help="The method's `space` option (wins over [method-options]): for random, the "
                   "method whose space it samples (default tfnas); for enas, macro or micro.")
@click.option("--dataset", default=DEFAULTS.dataset, show_default=True,
              help="digits (embedded), cifar10:DIR (python batches) or folder:DIR (class per subfolder).")
@click.option("--input-size", type=int, default=DEFAULTS.input_size, show_default=True,
              help="Images are resized to this square size.")
@click.option("--target", default=DEFAULTS.target, show_default=True,
              help="RUNTIME:DEVICE[:PRECISION], e.g. openvino:cpu, onnxruntime:cpu, torch:cpu.")
@click.option("--latency-ms", type=float, default=None,
              help="Latency budget (p50, ms) on the target. Default: --latency-fraction.")
@click.option("--latency-fraction", type=float, default=DEFAULTS.latency_fraction, show_default=True,
              help="Budget = F x the measured p50 of the largest subnet of the space on the target.")
@click.option("--threads", type=int, default=DEFAULTS.threads, show_default=True,
              help="Intra-op threads of the target runtime.")
@click.option("--batch", type=int, default=DEFAULTS.batch, show_default=True,
              help="Deployed batch size (latency is measured and shipped at this shape).")
@click.option("--export", "export", callback=_comma_list, default=",".join(DEFAULTS.export),
              show_default=True, help="Formats to export, comma separated (see `nas2deploy exporters`).")
@click.option("--search-epochs", type=int, default=None,
              help="Search budget in epochs (default: the method's own).")
@click.option("--retrain-epochs", type=int, default=DEFAULTS.retrain_epochs, show_default=True)
@click.option("--retrain-from", type=click.Choice(["inherit", "scratch"]),
              default=DEFAULTS.retrain_from, show_default=True,
              help="Fine-tune the weights inherited from the supernet, or start from scratch.")
@click.option("--latency-model", type=click.Choice(["flops", "lut", "calibrated"]),
              default=DEFAULTS.latency_model, show_default=True,
              help="Estimate that steers search and width: MACs fitted to two measured nets, a "
                   "per-op lookup table measured on the target (cached), or that table calibrated "
                   "on sampled subnets measured end to end.")
@click.option("--lut", type=click.Path(dir_okay=False), default=None,
              help="Steer by this latency table (e.g. one `nas2deploy lut build` measured on the "
                   "device); implies --latency-model lut. Needed for targets this machine "
                   "cannot run, such as tensorrt:cuda without TensorRT.")
@click.option("--max-rounds", type=int, default=DEFAULTS.max_rounds, show_default=True,
              help="Measure-and-shrink rounds before giving up on the budget.")
@click.option("--min-width", type=float, default=DEFAULTS.min_width, show_default=True,
              help="Smallest width multiplier the budget loop may use.")
@click.option("--calibration-samples", type=int, default=DEFAULTS.calibration_samples,
              show_default=True, help="int8: training images the quantizer calibrates on.")
@click.option("--min-agreement", type=float, default=DEFAULTS.min_agreement, show_default=True,
              help="fp16/int8: least top-1 agreement with the fp32 model on the test split.")
@click.option("--max-accuracy-drop", type=float, default=DEFAULTS.max_accuracy_drop,
              show_default=True, help="fp16/int8: most top-1 accuracy lost, in points.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--device", default=DEFAULTS.device, show_default=True,
              help="Where search and retrain run: auto (CUDA when present), cpu, cuda, cuda:N. "
                   "Latency is always measured on the target.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default=DEFAULTS.amp,
              show_default=True, help="Mixed precision on a GPU (auto: bf16 where supported; "
                                      "off on a CPU).")
@click.option("--augment", type=click.Choice(["standard", "none"]), default=DEFAULTS.augment,
              show_default=True, help="Training augmentation of cifar10/folder data: "
                                      "random-resized crop (pad-crop at 32 px) plus flip.")
@click.option("--cache", default=None, help="Folder for a uint8 cache of a folder dataset, "
                                            "reused by later runs.")
@click.option("--workers", type=int, default=None,
              help="DataLoader worker processes (default: min(4, CPUs - 1)).")
@click.option("--run-dir", default=None,
              help="Folder for the run's checkpoints and measurement journal (default: OUT.run "
                   "beside --out); kept if the run fails, removed once the bundle is written.")
@click.option("--resume", default=None, metavar="RUN_DIR",
              help="Continue the run whose run directory this is (same options as it was "
                   "started with) from its last checkpoint.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML file with any of these options (CLI wins); a [method-options] "
              "table holds the method's own options.")
@click.option("--out", default=DEFAULTS.out, show_default=True, help="Bundle directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or stage messages.")
@handled
def search_and_export_cmd(config_file: Path | None, as_json: bool, quiet: bool, **options: Any):
    """Search, materialize, retrain, export, check parity and measure latency on the target.

    Exit codes: 0 within budget, 2 bad input, 3 budget missed (bundle still written), 1 other.
    """
    from .pipeline import search_and_export

    space = options.pop("space")
    ctx = click.get_current_context()
    cli_values = {k: v for k, v in options.items()
                  if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE,
                                                     ParameterSource.ENVIRONMENT)}
    toml_values = load_toml(config_file) if config_file is not None else {}
    if space is not None:
        options_table = toml_values.get("method_options", {})
        if not isinstance(options_table, dict):
            raise UsageError(f"[method-options] in {config_file} must be a table")
        toml_values["method_options"] = {**options_table, "space": space}
    cfg = merge(toml_values, cli_values)
    log = (lambda m: None) if quiet else (lambda m: click.echo(f"[nas2deploy] {m}", err=True))
    result = search_and_export(cfg, log=log, progress=_progress_factory(quiet))
    if "rank" in result.manifest:  # a torchrun rank other than 0: rank 0 reports
        sys.exit(result.exit_code)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
    _summary(result.manifest, result.out, err=as_json)
    sys.exit(result.exit_code)


def _world(m: dict[str, Any]) -> int:
    return int(m.get("distributed", {}).get("world_size", 1))


def _summary(m: dict[str, Any], out: Path, err: bool) -> None:
    lat, t = m["latency"], m["target"]
    rows = [
        ("method", m["method"]["name"]),
        ("dataset", m["dataset"]["name"]),
        ("target", f"{t['runtime']}:{t['device']}:{t['precision']} batch {t['batch']}, "
                   f"{t['threads']} thread(s)"),
        ("budget", f"{lat['budget_ms']:.4f} ms"),
        ("measured p50 / p90", (f"{lat['measured']['p50_ms']:.4f} / "
                                f"{lat['measured']['p90_ms']:.4f} ms "
                                f"({lat['ratio_to_budget']:.2f} of budget)")
         if lat["measured"] else "not measured here"),
        ("predicted", f"{lat['predicted_ms']:.4f} ms"),
        ("within budget", {True: "yes", False: "NO (exit 3)" if _world(m) == 1 else
                           "NO (exit 0 under torchrun, where non-zero is a failed worker)"}.get(
            lat["within_budget"], "unverified: run `nas2deploy measure` on the device")),
        ("rounds", str(len(lat["rounds"]))),
        ("test top-1", f"{m['accuracy']['top1']:.4f}" + (
            f" (runtime {m['accuracy']['runtime_top1']:.4f})"
            if m["accuracy"]["runtime_top1"] is not None else "")),
        ("params / MACs", f"{m['model']['params']:,} / {m['model']['macs']:,}"),
        ("width multiplier", f"{m['model']['width_multiplier']:g}"),
    ]
    rows += [(f"parity {k}", _parity_line(v)) for k, v in m["parity"].items()]
    rows += [("time", f"{m['timings']['total_s']:.0f} s"), ("bundle", str(out))]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{w}}  {v}", err=err)


def _parity_line(v: dict[str, Any]) -> str:
    if not v.get("verified", True):
        return f"not verified here: {v.get('reason', '')}"
    if "max_abs_diff" in v:
        return f"{v['max_abs_diff']:.2e}"
    return (f"top-1 agreement {v['top1_agreement']:.2%}, accuracy drop "
            f"{v['accuracy_drop_points']:.2f} points")


@main.command("methods")
@handled
def methods_cmd():
    """List installed search methods (entry-point group nas2deploy.methods)."""
    from .registry import methods

    entries = methods.entries()
    if not entries:
        click.echo("no methods installed")
    for e in entries:
        if e.obj is None:
            click.echo(f"{e.name:<12} {e.dist:<20} BROKEN: {e.error}")
        else:
            click.echo(f"{e.name:<12} {e.dist:<20} {getattr(e.obj, 'paper', '')}")


@main.command("exporters")
@handled
def exporters_cmd():
    """List installed exporters, their runtime, and whether they can run here."""
    from .registry import exporters

    for e in exporters.entries():
        if e.obj is None:
            status = f"BROKEN: {e.error}"
        else:
            reason = e.obj.unavailable_reason()
            status = "available" if reason is None else f"unavailable: {reason}"
        runtime = getattr(e.obj, "runtime", None) or "-"
        click.echo(f"{e.name:<10} {e.dist:<20} runtime={runtime:<12} {status}")


@main.command("measure")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--target", default=None, help="RUNTIME:DEVICE[:PRECISION] (default: the bundle's).")
@click.option("--threads", type=int, default=None, help="Default: the bundle's.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurement as JSON on stdout.")
@click.option("--no-record", is_flag=True, help="Do not append the measurement to the manifest.")
@handled
def measure_cmd(bundle: Path, target: str | None, threads: int | None, as_json: bool,
                no_record: bool):
    """Re-measure a bundle on this machine; exit 3 if over its budget."""
    from .measure import measure_bundle

    rec = measure_bundle(bundle, target=target, threads=threads, record=not no_record)
    if as_json:
        click.echo(json.dumps(rec, indent=2))
    else:
        verdict = "within budget" if rec["within_budget"] else "OVER BUDGET"
        click.echo(f"{rec['target']}: p50 {rec['p50_ms']:.4f} ms, p90 {rec['p90_ms']:.4f} ms "
                   f"({rec['runs']} runs) vs budget {rec['budget_ms']:.4f} ms: {verdict}")
    sys.exit(0 if rec["within_budget"] else 3)


@main.command("build-engine")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default: the precision the bundle was exported for. int8 needs the bundle's "
                   "Q/DQ ONNX (an int8 export).")
@click.option("--trtexec", "use_trtexec", is_flag=True,
              help="Build with trtexec (the command in the bundle's tensorrt/build_engine.sh, "
                   "regenerated from the manifest; the script itself is never run) even if "
                   "TensorRT's Python bindings import.")
@click.option("--json", "as_json", is_flag=True, help="Print the artifact's info as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True)
@handled
def build_engine_cmd(bundle: Path, precision: str | None, use_trtexec: bool, as_json: bool,
                     quiet: bool):
    """Build BUNDLE's TensorRT engine on this machine and record it in the manifest.

    Uses TensorRT's Python API, or trtexec if the bindings are absent. Exit 2 where TensorRT or
    a GPU is missing.
    """
    from .engine import build_engine

    log = (lambda m: None) if quiet else (lambda m: click.echo(f"[nas2deploy] {m}", err=True))
    info = build_engine(bundle, precision=precision, trtexec=use_trtexec, log=log)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"{bundle / info['engine']}: {info['precision']} engine built with "
                   f"{info['built_with']} (TensorRT {info.get('tensorrt_version') or '?'}) on "
                   f"{info.get('device') or 'this GPU'} in {info['build_s']:.1f} s")


@main.group("lut")
def lut_group():
    """Latency lookup tables measured on a target runtime."""


@lut_group.command("build")
@click.option("--space", default="dsonas", show_default=True,
              help="Search space: a method name (see `nas2deploy methods`).")
@click.option("--target", default=DEFAULTS.target, show_default=True,
              help="RUNTIME:DEVICE[:PRECISION] the table is measured on.")
@click.option("--input-size", type=int, default=DEFAULTS.input_size, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table here (it is always cached).")
@click.option("--quiet", "-q", is_flag=True)
@handled
def lut_build_cmd(space, target, input_size, threads, batch, out, quiet):
    """Measure every distinct op signature of SPACE on TARGET, at a grid of widths."""
    from .latency.make import build_table_cli

    log = (lambda m: None) if quiet else (lambda m: click.echo(f"[nas2deploy] {m}", err=True))
    path = build_table_cli(space, target, input_size, out, _progress_factory(quiet),
                           threads=threads, batch=batch, log=log)
    click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    main()
