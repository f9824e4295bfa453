"""What every report figure shares: palettes, saving, label sizing, log axes, placeholder figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

#: Okabe & Ito (2008) colour-blind-safe palette (black last).
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
#: Paul Tol's "muted" palette, colour-blind safe, for 9 classes.
TOL_MUTED = [
    "#332288",
    "#88CCEE",
    "#44AA99",
    "#117733",
    "#999933",
    "#DDCC77",
    "#CC6677",
    "#882255",
    "#AA4499",
]
#: Point markers of the baselines; Celler's own (:data:`CELLER_MARKER`) is not among them.
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h", "<", ">", "p"]
CELLER_MARKER, CELLER_COLOUR = "*", "#000000"
CONTINUOUS = "viridis"
#: Printed size of a figure inch on the HTML page (CSS pixels), and the page's content width in inches.
CSS_DPI = 96
PAGE_WIDTH_IN = 12.4


def palette(n: int) -> list[str]:
    """``n`` distinct categorical colours: Okabe-Ito (<= 8), Tol muted (9), tab20 with its 10 saturated hues
    first (<= 20), then tab20 + tab20b + tab20c (cycling past 60)."""
    if n <= len(OKABE_ITO):
        return OKABE_ITO[:n]
    if n <= len(TOL_MUTED):
        return TOL_MUTED[:n]
    tab20 = [to_hex(colormaps["tab20"](i)) for i in (*range(0, 20, 2), *range(1, 20, 2))]  # 10 hues first
    if n <= 20:
        return tab20[:n]
    colours = tab20 + [to_hex(colormaps[m](i)) for m in ("tab20b", "tab20c") for i in range(20)]
    return [colours[i % len(colours)] for i in range(n)]


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white", format="png")
    return path


def text_width(labels: Sequence[object], fontsize: float) -> float:
    """Rough printed width (inches) of the longest label."""
    longest = max((len(str(s)) for s in labels), default=0)
    return longest * fontsize * 0.6 / 72


def tick_size(n: int) -> float:
    return 9 if n <= 30 else 8


def text_colour(rgba) -> str:
    """Black or white, whichever reads better on a background colour (relative luminance)."""
    r, g, b = to_rgb(rgba)
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def log_axis(ax, values, axis: str = "x") -> None:
    """Log scale with plain-number labels at 1, 2, 5 x 10^k (only 10^k over more than 3 decades of
    ``values``), no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    decades = np.log10(v.max() / v.min()) if len(v) else 0
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def footnote(fig: Figure, text: str) -> None:
    """A left-aligned note under the axes (part of the PNG, so it travels with the figure)."""
    if text:
        fig.supxlabel(text, x=0.01, ha="left", fontsize=8, color="0.25", wrap=True)


def empty_figure(message: str) -> Figure:
    """A small figure that says why there is nothing to plot."""
    fig = Figure(figsize=(6, 2))
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="0.3", wrap=True)
    ax.set_axis_off()
    return fig
