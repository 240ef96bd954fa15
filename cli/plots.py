"""``plot``: curves of a config or a live job as PNG and CSV."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paramsched.client.results import Values
from paramsched.server.schedules import ConfigError, JobSpec, build_job_spec

from .common import ADAM_BETA2, DEFAULT_BASE, CliError, UsageError
from .configs import ConfigFile, load_config
from .connect import client_from_args
from .curves import ProgressBar, plot_stride, simulate


# -- plot ----------------------------------------------------------------------------
@dataclass
class Layer:
    """One set of curves in a figure, drawn in each group's colour with this style."""

    curves: Values
    label: str | None  # None: no legend entry
    style: str
    alpha: float
    start: int | None = None
    stop: int | None = None


def figure_class() -> Any:
    """matplotlib's ``Figure`` class, imported only when a plot is wanted.

    The object API (no pyplot) needs no display and no global backend: it renders
    with Agg whatever backend the process has, so it is headless by construction.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CliError("plotting needs matplotlib: pip install 'paramsched[plot]'") from None
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache notices
    return Figure


def draw(out: str, layers: Sequence[Layer], *, title: str, epoch_length: int | None,
         marks: Sequence[tuple[int, str]] = (), log_y: bool = False) -> Any:
    """One subplot per param, x = iteration (epochs on top), one colour per group;
    returns the figure. ``log_y``: a logarithmic value axis (a param whose values are
    not all positive keeps a linear one). Mark labels sit inside the frame, below its
    top edge, so neither the frame nor the epoch axis above it cuts them."""
    figure = figure_class()
    params = list(dict.fromkeys(p for layer in layers for p in layer.curves.params))
    if not params:
        raise CliError("nothing to plot: no scheduled params")
    fig = figure(figsize=(9, 1.0 + 2.6 * len(params)), layout="constrained")
    axes = fig.subplots(len(params), 1, sharex=True, squeeze=False)[:, 0]
    for ax, param in zip(axes, params, strict=True):
        _draw_param(ax, param, layers, log_y=log_y)
        for iteration, label in marks:
            ax.axvline(iteration, color="grey", linewidth=0.8, linestyle="--")
            ax.annotate(label, (iteration, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -4), textcoords="offset points", fontsize=8, color="grey",
                        ha="left", va="top", annotation_clip=True,
                        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                              "alpha": 0.7})
    axes[-1].set_xlabel("iteration")
    if epoch_length:
        top = axes[0].secondary_xaxis(
            "top", functions=(lambda x: x / epoch_length, lambda e: e * epoch_length))
        top.set_xlabel("epoch")
    fig.suptitle(title)
    try:
        fig.savefig(out, dpi=110)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write {out}: {exc}") from None
    return fig


def _draw_param(ax: Any, param: str, layers: Sequence[Layer], *, log_y: bool = False) -> None:
    for layer in layers:
        curves = layer.curves
        if param not in curves.params:
            continue
        for g in range(curves.num_groups):
            xs, ys = curves.series(param, g, layer.start, layer.stop)
            if not xs:
                continue
            label = None  # a layer labelled None (context) stays out of the legend
            if layer.label is not None:
                group = f"group {g}" if curves.num_groups > 1 else ""
                label = ", ".join(x for x in (group, layer.label) if x) or None
            ax.plot(xs, ys, linestyle=layer.style, alpha=layer.alpha, color=f"C{g}",
                    label=label, linewidth=1.4)
    ax.set_ylabel(param)
    ax.grid(True, alpha=0.3)
    if log_y:
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        if ys and min(ys) > 0:
            ax.set_yscale("log")
            ax.set_ylabel(f"{param} (log)")
        else:
            ax.set_ylabel(f"{param} (linear: not all > 0)")
    handles, _ = ax.get_legend_handles_labels()
    if len(handles) > 1:
        ax.legend(fontsize=8, loc="best")


def write_csv(path: str, curves: Values, epoch_length: int | None,
              applied_below: int | None = None) -> None:
    """One row per (iteration, group); floats as ``repr`` so they read back exactly."""
    headers = ["iteration", *(["epoch"] if epoch_length else []), "group", *curves.params]
    if applied_below is not None:
        headers.append("applied")
    try:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(headers)
            for t, row in zip(curves.iterations, curves.rows, strict=True):
                for g, values in enumerate(row):
                    cells: list[object] = [t, *([t // epoch_length] if epoch_length else []), g]
                    cells += [repr(values[p]) for p in curves.params]
                    if applied_below is not None:
                        cells.append(int(t < applied_below))
                    writer.writerow(cells)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


def _base_groups(args: argparse.Namespace, config: ConfigFile) -> list[dict[str, Any]]:
    """The param groups' initial values: --base (per group) > the config's optimizer >
    the default; Adam turns momentum into betas = (momentum, 0.999)."""
    bases: list[dict[str, Any]] = [dict(b) for b in args.base] if args.base else [
        dict(config.base or DEFAULT_BASE)]
    count = args.groups or len(bases)
    if len(bases) == 1:
        bases = [dict(bases[0]) for _ in range(count)]
    elif len(bases) != count:
        raise UsageError(f"--groups {count} but --base given {len(bases)} times")
    if (args.optimizer or config.optimizer) == "adam":
        for base in bases:
            if "momentum" in base and "betas" not in base:
                base["betas"] = [base.pop("momentum"), ADAM_BETA2]
    return bases


def _config_spec(args: argparse.Namespace) -> tuple[JobSpec, ConfigFile]:
    config = load_config(args.config)
    epochs = args.epochs if args.epochs or args.max_iters else config.max_epochs
    iters = args.max_iters if args.epochs or args.max_iters else config.max_iters
    if epochs is None and iters is None:
        raise UsageError("give the length: --epochs E --epoch-length L, or --max-iters N")
    if epochs is not None and args.epoch_length is None:
        raise UsageError("--epochs needs --epoch-length")
    try:
        spec = build_job_spec(config.param_scheduler, _base_groups(args, config),
                              epoch_length=args.epoch_length, max_epochs=epochs,
                              max_iters=None if epochs is not None else iters)
    except ConfigError as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    return spec, config


def cmd_plot(args: argparse.Namespace) -> int:
    if bool(args.config) == bool(args.job):
        raise UsageError("give a CONFIG file or --job JOB (one of them)")
    if not (args.out or args.csv):
        raise UsageError("nothing to write: give --out FILE.png and/or --csv FILE.csv")
    if args.job:
        return _plot_job(args)
    if args.out:
        figure_class()  # fail before a long simulation if matplotlib is missing
    spec, _ = _config_spec(args)
    if any(s.is_plateau for s in spec.schedulers):
        print("note: ReduceOnPlateau needs validation metrics; plotted as if no validation "
              "ran (its value is held)", file=sys.stderr)
    # A CSV holds every iteration; a figure alone needs about PLOT_POINTS of them.
    stride = 1 if args.csv else plot_stride(spec.max_iters + 1)
    curves = simulate(spec, ProgressBar(spec.max_iters + 1, "simulating"), stride=stride)
    if args.csv:
        write_csv(args.csv, curves, spec.epoch_length)
        print(f"wrote {args.csv}")
    if args.out:
        draw(args.out, [Layer(curves, "", "-", 1.0)], title=args.title or Path(args.config).name,
             epoch_length=spec.epoch_length, log_y=args.log_y)
        print(f"wrote {args.out}")
    return 0


def _plot_job(args: argparse.Namespace) -> int:
    """A live job: the applied past solid, the planned future dashed."""
    if args.out:
        figure_class()
    with client_from_args(args) as client:
        job = client.get_job(args.job)
        total = job.max_iters + 1
        # A CSV holds every iteration; a figure alone reads about PLOT_POINTS of them
        # (the server computes every stride-th iteration only).
        stride = 1 if args.csv else plot_stride(total)
        bar = ProgressBar(-(-total // stride), "fetching")
        curves = client.values(args.job, 0, total, stride=stride, progress=bar.update)
        bar.close()
    now = min(job.furthest_iteration, job.max_iters)
    if curves.waits_for_epoch is not None:
        print(f"note: values from iteration {curves.stop} on wait for the validation decision "
              f"of epoch {curves.waits_for_epoch}", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, curves, job.epoch_length, applied_below=now)
        print(f"wrote {args.csv}")
    if args.out:
        # With a stride, each line reaches the other's nearest point, so they meet.
        step = curves.stride
        layers = [Layer(curves, "planned", "--", 0.8, start=max(0, now - step + 1))]
        if now > 0:
            layers.insert(0, Layer(curves, "applied", "-", 1.0, stop=now + step))
        draw(args.out, layers, title=args.title or f"job {args.job} (generation "
             f"{job.generation})", epoch_length=job.epoch_length, marks=[(now, "now")],
             log_y=args.log_y)
        print(f"wrote {args.out}")
    return 0
