"""``bank bench``'s output: the table of runs, the comparisons, the chart, and the machine
the figures were measured on."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from bank_cli.bench.past import past_line
from bank_cli.bench.plans import NAIVE, RESERVATION


def comparison_line(comparison: dict[str, Any]) -> str:
    def rates(values: Sequence[float]) -> str:
        return ", ".join(f"{value:,.0f}" for value in values)

    return (
        f"{comparison['measured']} / {comparison['control']} on the same services:"
        f" {comparison['ratio']:.2f} x (mean of {rates(comparison['measured_per_second'])}"
        f" over mean of {rates(comparison['control_per_second'])} transfers/s)"
    )


HEADER = (
    f"{'run':<18} {'strategy':<11} {'in flight':>9} {'requested':>9} {'succeeded':>9}"
    f" {'failed':>6} {'req/s':>8} {'ok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'money':>6}"
    f" {'gen CPU':>7} {'acct CPU':>8} {'xfer CPU':>8}"
)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def row(result: dict[str, Any]) -> str:
    latency, cpu = result["latency_ms"], result["cpu"]
    return (
        f"{result['name']:<18} {result['strategy']:<11} {result['in_flight']:>9}"
        f" {result['requested']:>9} {result['succeeded']:>9} {result['failed']:>6}"
        f" {result['requests_per_second']:>8.1f} {result['succeeded_per_second']:>8.1f}"
        f" {latency['p50']:>8.1f} {latency['p99']:>8.1f} {result['status']:>6}"
        f" {_percent(cpu['load_generator']):>7} {_percent(cpu['account_service']):>8}"
        f" {_percent(cpu['transfer_service']):>8}"
    )


def first_touch_line(result: dict[str, Any]) -> str:
    return "first touch ms: " + ", ".join(f"{ms:.1f}" for ms in result["first_touch_ms"])


def print_table(results: Iterable[dict[str, Any]]) -> None:
    print(HEADER)
    for result in results:
        print(row(result))
        if "first_touch_ms" in result:
            print(f"{'':<18} {first_touch_line(result)}")
        if "past_ms" in result:
            print(f"{'':<18} {past_line(result['past_ms'])}")
        if result["failures"]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(result["failures"].items()))
            print(f"{'':<18} failures: {reasons}")
        for problem in result["money"]["problems"]:
            print(f"{'':<18} MONEY: {problem}")


def draw_chart(results: Sequence[dict[str, Any]], path: Path, title: str) -> str | None:
    """Throughput and p99 against concurrency, reservation vs naive; the path, or why not."""
    sweep = [r for r in results if r["group"] == "sweep"]
    if not sweep:
        return "no sweep run, no chart"
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install 'reservebank[bench]'): no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for strategy, style in ((RESERVATION, "o-"), (NAIVE, "s--")):
        points = sorted(
            (r for r in sweep if r["strategy"] == strategy), key=lambda r: r["in_flight"]
        )
        if not points:
            continue
        widths = [r["in_flight"] for r in points]
        label = "reservation protocol" if strategy == RESERVATION else "naive (lock both)"
        left.plot(widths, [r["succeeded_per_second"] for r in points], style, label=label)
        right.plot(widths, [r["latency_ms"]["p99"] for r in points], style, label=label)
    widths = sorted({r["in_flight"] for r in sweep})
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(widths, [str(width) for width in widths])
        axis.minorticks_off()
        axis.set_xlabel("transfers in flight")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    left.set_ylabel("completed transfers / s")
    left.set_ylim(bottom=0)
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def cpu_reference_ms() -> float:
    """Milliseconds one core takes for a fixed piece of pure Python (best of five).

    Machines of one kind differ, and so does one machine from day to day: this puts a
    number on the core the figures were measured on, so runs on different days compare.
    """
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def describe_machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_reference_ms": cpu_reference_ms(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        # Other work on the machine skews every number: this says how much there was.
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
