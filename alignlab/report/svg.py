"""Inline SVG charts for the report pages: axes with nice ticks, line charts with a colour key and a zero line,
and the reward–KL frontier (colour by method family, marker by how the KL is known, best-of-N as a curve) whose
labels are placed so that they never overprint each other or leave the picture.

Text widths are estimated here (Arial's metrics, which Liberation Sans shares) and pinned in the page with
``textLength``, so the boxes the placement reasons about are the boxes the browser draws.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#393b79", "#637939", "#843c39", "#7b4173", "#8c6d31", "#6b6ecf", "#e7969c")
"""Distinct colours for up to 16 method families (a decoding run has a dozen), then repeated."""
FONT = "'Liberation Sans',Arial,Helvetica,sans-serif"
NARROW, WIDE = set("ijlI.,:;'|!()[] ft-"), set("mwMW@%")
CAPITALS = set("ABCDEFGHJKLNOPQRSTUVXYZ")

KL_KINDS = {
    "exact": ("exact", "the reference itself: KL 0 by definition"),
    "sampled": ("sampled", "mean of log π(y) − log π_ref(y) over the method's own samples y ~ π"),
    "estimate": ("estimate", "best-of-N's estimator (Beirami et al., 2024) from the samples' reward ranks"),
    "bound": ("upper bound", "best-of-N's closed form log N − (N − 1)/N: the true KL lies at or left of it"),
    "point": ("point", "a deterministic search: −log π_ref(y) of its one completion per prompt"),
    None: ("not stated", "the run did not say how this KL is known"),
}
"""Marker legend of the frontier: kind → (short name, what it means)."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in SVG pixels."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box, gap: float = 1.0) -> bool:
        return not (self.x1 + gap <= other.x0 or other.x1 + gap <= self.x0 or self.y1 + gap <= other.y0
                    or other.y1 + gap <= self.y0)

    def inside(self, other: Box) -> bool:
        return self.x0 >= other.x0 and self.y0 >= other.y0 and self.x1 <= other.x1 and self.y1 <= other.y1


def text_width(text: str, size: float) -> float:
    """Estimated width in pixels of `text` at `size` px in Arial/Liberation Sans (pinned with ``textLength``)."""
    units = sum(0.3 if c in NARROW else 0.86 if c in WIDE else 0.68 if c in CAPITALS else 0.56 for c in text)
    return round(units * size, 1)


def text(x: float, y: float, content: str, size: float = 11, anchor: str = "start", css: str = "",
         extra: str = "") -> str:
    """An SVG text element whose width is pinned to `text_width` (so layout and browser agree)."""
    width = text_width(content, size)
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" textLength="{width}" '
            f'lengthAdjust="spacingAndGlyphs"{f" class={css!r}" if css else ""}{extra}>{html.escape(content)}</text>')


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """4–6 round numbers (1, 2, 2.5 or 5 × 10^k apart) inside [lo, hi], as close to `target` ticks as they come."""
    if not hi > lo or hi - lo <= 1e-9 * max(abs(lo), abs(hi)):  # one value, up to rounding noise
        return [lo]
    magnitude = 10 ** math.floor(math.log10((hi - lo) / target))
    best: list[float] = []
    for step in (m * magnitude * scale for scale in (0.1, 1, 10) for m in (1, 2, 2.5, 5)):
        ticks = [float(f"{k * step:.12g}")  # 12 significant digits: 1e-4, not 9.999999999999999e-05
                 for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]
        if not best or abs(len(ticks) - target) < abs(len(best) - target) or (
                4 <= len(ticks) <= 6 and not 4 <= len(best) <= 6):
            best = ticks
    return best


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """`value` with as many decimals as the tick step needs (``1.05e-4`` style for tiny or huge numbers)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 0.0
    step = step or abs(value) or 1.0
    if value == 0:
        return "0"
    power = math.floor(math.log10(step) + 1e-9)
    extra = 1 if round(step / 10 ** power, 6) == 2.5 else 0
    if step < 1e-3 or max(abs(t) for t in ticks) >= 1e5:
        exponent = math.floor(math.log10(max(abs(t) for t in ticks)) + 1e-9)
        return f"{value / 10 ** exponent:.{max(0, exponent - power + extra)}f}e{exponent}"
    return f"{value:.{max(0, extra - power)}f}"


def axis_range(values: Sequence[float], pad: float = 0.05, include: float | None = None) -> tuple[float, float]:
    """The span of `values` (and `include`, e.g. 0 for a zero line) widened by `pad` of itself at both ends."""
    lo, hi = min(values), max(values)
    if include is not None:
        lo, hi = min(lo, include), max(hi, include)
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)) or hi == lo:  # equal up to rounding noise: one value
        lo, hi = lo - (abs(lo) * 0.1 or 1), hi + (abs(hi) * 0.1 or 1)
    span = hi - lo
    return lo - pad * span, hi + pad * span


def linear(lo: float, hi: float, out_lo: float, out_hi: float) -> Callable[[float], float]:
    return lambda v: out_lo + (v - lo) / (hi - lo) * (out_hi - out_lo)


def axes(plot: Box, xr: tuple[float, float], yr: tuple[float, float], xlabel: str, ylabel: str,
         zero_line: bool = False) -> tuple[list[str], Callable, Callable]:
    """Grid, ticks, axis lines and labels of a plot area; with the maps data → pixels."""
    sx, sy = linear(*xr, plot.x0, plot.x1), linear(*yr, plot.y1, plot.y0)
    xt, yt = nice_ticks(*xr), nice_ticks(*yr)
    parts = []
    for v in xt:
        parts.append(f'<line x1="{sx(v):.1f}" y1="{plot.y0}" x2="{sx(v):.1f}" y2="{plot.y1 + 4}" class="grid"/>')
        parts.append(text(sx(v), plot.y1 + 16, tick_label(v, xt), 10, "middle", "tick"))
    for v in yt:
        parts.append(f'<line x1="{plot.x0 - 4}" y1="{sy(v):.1f}" x2="{plot.x1}" y2="{sy(v):.1f}" class="grid"/>')
        parts.append(text(plot.x0 - 6, sy(v) + 3.5, tick_label(v, yt), 10, "end", "tick"))
    if zero_line and yr[0] < 0 < yr[1]:
        parts.append(f'<line x1="{plot.x0}" y1="{sy(0):.1f}" x2="{plot.x1}" y2="{sy(0):.1f}" class="zero"/>')
    parts.append(f'<polyline points="{plot.x0},{plot.y0} {plot.x0},{plot.y1} {plot.x1},{plot.y1}" class="axis" '
                 'fill="none"/>')
    parts.append(text((plot.x0 + plot.x1) / 2, plot.y1 + 32, xlabel, 11, "middle", "tick"))
    middle = (plot.y0 + plot.y1) / 2
    parts.append(text(14, middle, ylabel, 11, "middle", "tick", f' transform="rotate(-90 14 {middle:.1f})"'))
    return parts, sx, sy


def color_key(names: Sequence[str], x: float, y: float, right: float) -> tuple[list[str], float]:
    """Swatch-and-name entries in rows from (x, y), wrapped at `right`; with the y below the last row."""
    parts, cx = [], x
    for i, name in enumerate(names):
        width = 22 + text_width(name, 11) + 14
        if cx + width > right and cx > x:
            cx, y = x, y + 16
        color = COLORS[i % len(COLORS)]
        parts.append(f'<line x1="{cx:.1f}" y1="{y - 4:.1f}" x2="{cx + 18:.1f}" y2="{y - 4:.1f}" stroke="{color}" '
                     'stroke-width="3"/>')
        parts.append(text(cx + 22, y, name, 11, css="key"))
        cx += width
    return parts, y + 8


MAX_LINE_POINTS = 2000
"""A line with more points is thinned to each bucket's lowest and highest (`thinned`): a 100k-step run's page stays
small and its spikes stay visible."""


def thinned(values: list[tuple[float, float]], limit: int = MAX_LINE_POINTS) -> list[tuple[float, float]]:
    """`values` in order, or — past `limit` points — the lowest and the highest of each of `limit` / 2 buckets."""
    if len(values) <= limit:
        return values
    size = math.ceil(len(values) / (limit // 2))
    kept = []
    for start in range(0, len(values), size):
        bucket = values[start:start + size]
        low, high = min(bucket, key=lambda v: v[1]), max(bucket, key=lambda v: v[1])
        kept += sorted({low, high}, key=lambda v: v[0])
    return kept


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
               zero_line: bool = False, width: int = 370, height: int = 250) -> str:
    """Lines against x, one colour per series with its key under the title; a dashed zero line where asked
    (its 0 always in view). Long lines are `thinned`."""
    if not any(series.values()):
        return ""
    series = {name: thinned(values) for name, values in series.items()}
    key, below = color_key(list(series), 10, 34, width - 10)
    plot = Box(58, below + 4, width - 12, height - 40)
    xs = [x for values in series.values() for x, _ in values]
    ys = [y for values in series.values() for _, y in values]
    parts, sx, sy = axes(plot, axis_range(xs, 0.02), axis_range(ys, 0.06, 0.0 if zero_line else None), xlabel,
                         ylabel, zero_line)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}" font-family="{FONT}">',
             text(width / 2, 17, title, 12, "middle", "title"), *key, *parts]
    for i, values in enumerate(series.values()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}"/>')
        if len(values) <= 40:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{color}"><title>'
                      f'{html.escape(f"{tick_label(x, [0, 1])}: {y:.4g}")}</title></circle>' for x, y in values]
    return "".join(parts) + "</svg>"


def marker(kind: str | None, x: float, y: float, color: str, tip: str = "", css: str = "point") -> str:
    """The frontier's marker of a KL kind: circle sampled, diamond estimate, ◁ upper bound (the true KL is
    further left), square point, ring exact, cross not stated."""
    tip = f"<title>{html.escape(tip)}</title>" if tip else ""
    if kind in ("sampled", "dot"):
        return f'<circle class="{css}" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}">{tip}</circle>'
    if kind == "exact":
        return (f'<circle class="{css}" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#fff" stroke="{color}" '
                f'stroke-width="2.2">{tip}</circle>')
    shapes = {"estimate": ((0, -6.5), (6.5, 0), (0, 6.5), (-6.5, 0)), "bound": ((-6, 0), (5, -6), (5, 6)),
              "point": ((-5, -5), (5, -5), (5, 5), (-5, 5))}
    if kind in shapes:
        corners = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in shapes[kind])
        return f'<polygon class="{css}" points="{corners}" fill="{color}">{tip}</polygon>'
    return (f'<path class="{css}" d="M{x - 5:.1f},{y - 5:.1f}L{x + 5:.1f},{y + 5:.1f}M{x - 5:.1f},{y + 5:.1f}'
            f'L{x + 5:.1f},{y - 5:.1f}" stroke="{color}" stroke-width="2.4" fill="none">{tip}</path>')


def candidates(x: float, y: float, width: float, height: float) -> list[tuple[Box, bool]]:
    """Boxes for a label of this size around the point (x, y), nearest first; True where a leader line is due."""
    found = []
    for radius in (7, 14, 26, 42, 64, 90):
        for dx, dy in ((1, 0), (-1, 0), (1, -1), (-1, -1), (1, 1), (-1, 1), (0, -1), (0, 1)):
            left = x + radius * dx - (width if dx < 0 else width / 2 if dx == 0 else 0)
            top = y + radius * dy - (height if dy < 0 else height / 2 if dy == 0 else 0)
            found.append((Box(left, top, left + width, top + height), radius > 14))
    return found


def place_labels(anchors: Sequence[tuple[float, float]], labels: Sequence[str], area: Box, obstacles: list[Box],
                 size: float = 11) -> list[tuple[Box, bool] | None]:
    """A box for each label near its anchor, inside `area`, clear of the other labels and of `obstacles` (the
    markers); None for a label that fits nowhere (the caller lists it instead). Greedy, in the order given."""
    placed: list[tuple[Box, bool] | None] = []
    taken = list(obstacles)
    for (x, y), label in zip(anchors, labels, strict=True):
        width, height = text_width(label, size) + 2, size * 1.25
        choice = next(((box, leader) for box, leader in candidates(x, y, width, height)
                       if box.inside(area) and not any(box.overlaps(other) for other in taken)), None)
        if choice:
            taken.append(choice[0])
        placed.append(choice)
    return placed


def leader(x: float, y: float, box: Box) -> str:
    """A thin line from the point to the nearest point of its label's box."""
    tx, ty = min(max(x, box.x0), box.x1), min(max(y, box.y0), box.y1)
    return f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{tx:.1f}" y2="{ty:.1f}" class="leader"/>'


def family_colors(points: Sequence[dict]) -> dict[str, str]:
    """One colour per method family in order of appearance; the reference dark grey."""
    others = [f for f in dict.fromkeys(p["family"] for p in points) if f != "reference"]
    return {"reference": "#333333", **{f: COLORS[i % len(COLORS)] for i, f in enumerate(others)}}


def frontier_legend(points: Sequence[dict], colors: dict[str, str], x: float, y: float,
                    kinds: bool = True) -> list[str]:
    """The frontier's keys at (x, y) downwards: each family's colour, then (`kinds`) each KL kind's marker."""
    parts = [text(x, y, "method", 11, css="key-head")]
    for family in dict.fromkeys(p["family"] for p in points):
        y += 17
        parts += [f'<rect x="{x}" y="{y - 9}" width="14" height="10" fill="{colors[family]}"/>',
                  text(x + 20, y, family, 11, css="key")]
    if not kinds:
        return parts
    parts.append(text(x, y + 28, "KL is", 11, css="key-head"))
    y += 28
    for kind in dict.fromkeys(p.get("kl_kind") for p in points):
        y += 18
        parts += [marker(kind, x + 7, y - 4, "#555", css="key-marker"),
                  text(x + 20, y, KL_KINDS.get(kind, KL_KINDS[None])[0], 11, css="key")]
    return parts


def frontier_curves(points: Sequence[dict], sx: Callable, sy: Callable) -> list[tuple[str, list[tuple]]]:
    """(family, pixel path) of a line through the points of a family and KL kind that carry an N (best-of-N),
    by N."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        if p.get("n") is not None:
            groups.setdefault((p["family"], p.get("kl_kind")), []).append(p)
    chains = [sorted(group, key=lambda p: p["n"]) for group in groups.values()]
    return [(chain[0]["family"], [(sx(p["kl"]), sy(p["reward"])) for p in chain]) for chain in chains
            if len(chain) > 1]


def curve_line(path: Sequence[tuple[float, float]], color: str) -> str:
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in path)
    return (f'<polyline class="curve" fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="5 3" '
            f'points="{points}"/>')


def along(path: Sequence[tuple[float, float]], every: float = 5.0) -> list[Box]:
    """Small boxes every `every` pixels along a polyline: a curve's share of the obstacles labels avoid."""
    boxes = []
    for (x0, y0), (x1, y1) in itertools.pairwise(path):
        steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / every))
        boxes += [Box(x - 1.5, y - 1.5, x + 1.5, y + 1.5) for k in range(steps + 1)
                  for x, y in [(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps)]]
    return boxes


def frontier_labels(points: Sequence[dict], xy: list[tuple[float, float]], area: Box,
                    curves: Sequence[Sequence[tuple[float, float]]] = ()) -> tuple[list[str], list[int]]:
    """Each point's label where it fits, clear of the markers and `curves` (else its number, else nothing); the
    numbers of those not labelled."""
    markers = [Box(x - 7, y - 7, x + 7, y + 7) for x, y in xy] + [b for path in curves for b in along(path)]
    labels = [str(p["label"] if p.get("short") is None else p["short"]) for p in points]
    named = [i for i, label in enumerate(labels) if label]
    spots = place_labels([xy[i] for i in named], [labels[i] for i in named], area, markers)
    placed: list[tuple[Box, bool] | None] = [None] * len(points)
    for i, spot in zip(named, spots, strict=True):
        placed[i] = spot
    taken = markers + [spot[0] for spot in placed if spot]
    missing = [i for i in named if placed[i] is None]
    numbered = place_labels([xy[i] for i in missing], [str(i + 1) for i in missing], area, taken)
    parts = []
    for i, spot, content in [*((i, placed[i], labels[i]) for i in named if placed[i]),
                             *((i, spot, str(i + 1)) for i, spot in zip(missing, numbered, strict=True))]:
        if spot is None:
            continue
        box, needs_leader = spot
        if needs_leader:
            parts.append(leader(*xy[i], box))
        parts.append(text(box.x0 + 1, box.y0 + 0.9 * 11, content, 11, css="label"))
    return parts, [i + 1 for i in missing]


def frontier_chart(points: Sequence[dict], element_id: str = "frontier", width: int = 1120,
                   height: int = 470, kinds: bool = True) -> tuple[str, list[int]]:
    """Reward against KL: colour by `family`, marker by `kl_kind`, best-of-N (points with `n`) as a dashed curve,
    every label placed clear of the others and inside the plot; with the numbers (1-based, as in the table) of the
    points whose label did not fit, which the page lists under the chart. Without `kinds` every marker is a dot
    and the legend names only the families."""
    if not points:
        return "", []
    plot = Box(66, 34, width - 250, height - 50)
    colors = family_colors(points)
    parts, sx, sy = axes(plot, axis_range([p["kl"] for p in points], 0.05),
                         axis_range([p["reward"] for p in points], 0.08), "KL(π ‖ π_ref), nats per completion",
                         "mean reward")
    out = [f'<svg id="{html.escape(element_id)}" class="chart wide" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="reward against KL" font-family="{FONT}">',
           text((plot.x0 + plot.x1) / 2, 20, "mean reward against KL(π ‖ π_ref)", 13, "middle", "title"), *parts]
    curves = frontier_curves(points, sx, sy)
    out += [curve_line(path, colors[family]) for family, path in curves]
    xy = [(sx(p["kl"]), sy(p["reward"])) for p in points]
    for i, (p, (x, y)) in enumerate(zip(points, xy, strict=True)):
        kind = KL_KINDS.get(p.get("kl_kind"), KL_KINDS[None])[0]
        out.append(marker(p.get("kl_kind") if kinds else "dot", x, y, colors[p["family"]],
                          f"{i + 1}. {p['label']}: KL {p['kl']:.4g} ({kind}), reward {p['reward']:.4g}"))
    labels, unnamed = frontier_labels(points, xy, plot, [path for _, path in curves])
    out += labels + frontier_legend(points, colors, plot.x1 + 24, plot.y0 + 6, kinds)
    return "".join(out) + "</svg>", unnamed
