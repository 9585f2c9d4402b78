"""``accuracy.png``: the demo's metric per round, one line per compared run.

The attack-free FedAvg run is the reference every other line is read against, so it is drawn
last, on top of the others, in black and dashed: a robust rule that tracks it closely would
otherwise hide it. FedAvg under attack is labelled as such, so that its collapse is not read as
FedAvg's normal behaviour.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

REFERENCE_STYLE = {"color": "black", "ls": "--", "lw": 2.0, "zorder": 3}


def is_reference(run: dict[str, Any]) -> bool:
    """Whether ``run`` (an entry of ``summary["runs"]``) is the attack-free FedAvg reference."""
    return (
        run["rule"] == "mean"
        and not run["attacked"]
        and run["secure"] is None
        and not run.get("dp")
    )


def line_label(label: str, run: dict[str, Any], attacked_demo: bool) -> str:
    """The legend entry of ``run``; ``attacked_demo`` is whether the demo has Byzantine hospitals."""
    if run["rule"] != "mean":
        return label
    if run.get("dp"):
        dp, eps = run["dp"], run["rounds"][-1].get("epsilon")
        spent = "" if eps is None else f", epsilon {eps:.3g}"
        return f"FedAvg + DP (z={dp['noise_multiplier']:g}, C={dp['clipping_norm']:g}{spent})"
    name = "FedAvg on CKKS" if run["secure"] == "ckks" else "FedAvg"
    if run["attacked"]:
        return f"{name} (attacked)"
    return f"{name}, no attack (reference)" if attacked_demo else name


def figure(summary: dict[str, Any]) -> Any:
    """The matplotlib figure of ``summary`` (as :func:`~bcfl_engine.demo.run.run_demo` returns it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric = summary["metric"]
    attacked_demo = bool(summary["byzantine_clients"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    runs = list(summary["runs"].items())
    # The reference last, so that it is drawn over the lines that follow it closely.
    runs.sort(key=lambda item: is_reference(item[1]) and attacked_demo)
    for label, run in runs:
        ys = [h[metric] if math.isfinite(h[metric]) else float("nan") for h in run["rounds"]]
        style: dict[str, Any] = {"ls": "-", "zorder": 2}
        if is_reference(run) and attacked_demo:
            style = dict(REFERENCE_STYLE)
        ax.plot(
            range(1, len(ys) + 1),
            ys,
            marker="o",
            ms=3,
            label=line_label(label, run, attacked_demo),
            **style,
        )
        stop = (run.get("dp") or {}).get("stopped_at_round")
        if stop is not None:  # where the privacy budget refused the next round
            ax.axvline(stop - 0.5, color="grey", ls=":", lw=1.2, zorder=1)
            ax.annotate(
                f"DP budget {run['dp']['budget']:g} spent",
                (stop - 0.5, 0.02),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                color="grey",
            )
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy" if metric == "accuracy" else "test RMSE")
    if metric == "rmse":
        ax.set_yscale("log")
    nb = summary["byzantine_clients"]
    ax.set_title(f"{summary['dataset']}: {summary['clients']} hospitals, {len(nb)} Byzantine")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(summary: dict[str, Any], path: Path) -> None:
    """Write :func:`figure` of ``summary`` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = figure(summary)
    fig.savefig(path)
    plt.close(fig)
