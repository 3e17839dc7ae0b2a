"""`report.html`: one self-contained page per run folder — the reward–KL frontier, the training curves, the samples
side by side (searchable, paginated), the config and the environment.

Everything is inline (charts as SVG drawn here, a few lines of plain JavaScript for the table, no library, no
font, no image from elsewhere) and a Content-Security-Policy forbids the page any network access, so it opens the
same offline, from an e-mail attachment or a CI artifact. It is re-created from the run folder alone
(`alignlab report RUN_DIR`): ``config.yaml``, ``metrics.jsonl`` (also a training run one folder down, as the
demo's ``dpo/``), ``summary.json`` (the demo's and ``alignlab decode``'s frontier points), ``samples.jsonl``,
``precision.json``, ``data_report.json``, and a diagnostic's or evaluation's ``result.json`` and PNGs.

The samples table carries at most `SAMPLE_BUDGET_BYTES` of rows (texts cut to `MAX_TEXT_CHARS`), taken evenly
across the file, and says how many of how many it shows: a run with 100k samples gives a page of a few MB.
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
from pathlib import Path

import alignlab
from alignlab.errors import ConfigError

SAMPLE_BUDGET_BYTES = 3_000_000
MAX_RESULT_CHARS = 200_000
MAX_PICTURE_BYTES = 1_000_000
MAX_TEXT_CHARS = 400
PAGE_ROWS = 25

CURVES = (
    ("loss", ("loss", "eval/loss")),
    ("reward margin", ("rewards/margins", "eval/rewards/margins")),
    ("reward accuracy", ("rewards/accuracies", "eval/rewards/accuracies")),
    ("log-prob drift vs the reference (nats)", ("displacement/chosen_logp_delta", "displacement/rejected_logp_delta")),
    ("learning rate", ("lr",)),
    ("gradient norm", ("grad_norm",)),
    ("skipped steps", ("skipped_steps",)),
)
"""Training curves: (title, metric names drawn on it); a chart is drawn when any of its metrics was logged."""

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def read_jsonl(path: Path) -> list[dict]:
    """The readable lines of a JSONL file (a line cut off by a killed run is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                rows.append(value)
    return rows


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value) else None


def online_points(rounds: list[dict]) -> list[dict]:
    """(label, KL, reward) of each evaluated round of an online run's online.jsonl (held-out reward, sampled KL)."""
    return [{"label": f"round {r.get('round')}", "kl": kl, "reward": reward, "kl_kind": "sampled"}
            for r in rounds if isinstance(r.get("eval"), dict)
            and (kl := _number(r["eval"].get("kl"))) is not None
            and (reward := _number(r["eval"].get("reward_mean"))) is not None]


def online_curves(rounds: list[dict]) -> str:
    """The rounds of an online run: reward and sampled KL of each round's training samples and held-out prompts."""
    series = {}
    for name, part, key in (("sample reward", "samples", "reward_mean"), ("sample KL", "samples", "kl"),
                            ("held-out reward", "eval", "reward_mean"), ("held-out KL", "eval", "kl")):
        values = [(r["round"], v) for r in rounds if isinstance(r.get(part), dict) and isinstance(r.get("round"), int)
                  and (v := _number(r[part].get(key))) is not None]
        if values:
            series[name] = values
    return svg_chart(series, "online rounds", "round", "reward / KL (nats)") if series else ""


def _summary_points(summary: dict) -> list[dict]:
    """Every method of a demo's or a decode run's summary.json, as it stands."""
    points = []
    for label, key in (("reference", "reference"), ("DPO", "dpo")):
        if isinstance(summary.get(key), dict):
            points.append({"label": label, **summary[key]})
    for n, point in (summary.get("best_of_n") or {}).items():
        points.append({"label": f"best-of-{n}", "kl_kind": "bound" if point.get("kl_is_upper_bound") else None,
                       **point})
    for label, point in (summary.get("decoding") or {}).items():
        points.append({"label": label, **point})
    points += list(summary.get("methods") or [])
    return points


def frontier_points(summary: dict) -> list[dict]:
    """(label, KL, reward, how the KL is known) of every method in a demo's or a decode run's summary.json whose
    KL and reward are finite numbers (`left_out_points` names the others)."""
    return [{"label": str(p.get("label", "?")), "kl": _number(p.get("kl")), "reward": _number(p.get("reward")),
             "kl_kind": p.get("kl_kind")} for p in _summary_points(summary)
            if _number(p.get("kl")) is not None and _number(p.get("reward")) is not None]


def left_out_points(summary: dict) -> list[str]:
    """The labels of the methods `frontier_points` leaves out: a KL or reward that is not a finite number."""
    return [str(p.get("label", "?")) for p in _summary_points(summary)
            if _number(p.get("kl")) is None or _number(p.get("reward")) is None]


def _scale(values: list[float], low: float, high: float, margin: float = 0.0) -> tuple[float, float, callable]:
    """(min, max, map to [low, high]) of `values`, with `margin` of the span kept free at both ends."""
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    pad = margin * (hi - lo)
    return lo, hi, lambda v: low + (v - lo + pad) / (hi - lo + 2 * pad) * (high - low)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def svg_chart(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
              points_only: bool = False, labels: list[str] | None = None, element_id: str = "") -> str:
    """A line (or scatter) chart as inline SVG: one colour per series, min/max ticks, a legend."""
    width, height, left, right, top, bottom = 460, 260, 56, 12, 28, 40
    xs = [x for values in series.values() for x, _ in values]
    ys = [y for values in series.values() for _, y in values]
    if not xs:
        return ""
    x0, x1, sx = _scale(xs, left, width - right - (90 if points_only else 0), 0.04)
    y0, y1, sy = _scale(ys, height - bottom, top, 0.06)
    parts = [f'<svg{f" id={html.escape(element_id)!r}" if element_id else ""} class="chart" viewBox="0 0 {width} '
             f'{height}" width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
             f'<text x="{sx(x0):.1f}" y="{height - bottom + 14}" text-anchor="middle" class="tick">{_fmt(x0)}</text>',
             f'<text x="{sx(x1):.1f}" y="{height - bottom + 14}" text-anchor="middle" class="tick">{_fmt(x1)}</text>',
             f'<text x="{left - 4}" y="{sy(y0) + 3:.1f}" text-anchor="end" class="tick">{_fmt(y0)}</text>',
             f'<text x="{left - 4}" y="{sy(y1) + 3:.1f}" text-anchor="end" class="tick">{_fmt(y1)}</text>',
             f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle" class="tick">'
             f'{html.escape(xlabel)}</text>',
             f'<text x="12" y="{(top + height - bottom) / 2}" transform="rotate(-90 12 {(top + height - bottom) / 2})"'
             f' text-anchor="middle" class="tick">{html.escape(ylabel)}</text>']
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = [(sx(x), sy(y)) for x, y in values]
        if not points_only and len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        if points_only or len(coords) <= 40:
            for j, (x, y) in enumerate(coords):
                tip = html.escape(f"{labels[j] if labels else name}: ({_fmt(values[j][0])}, {_fmt(values[j][1])})")
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{4 if points_only else 2}" fill="{color}">'
                             f'<title>{tip}</title></circle>')
                if points_only and labels:
                    parts.append(f'<text x="{x + 6:.1f}" y="{y - 4:.1f}" class="point">{html.escape(labels[j])}</text>')
        if len(series) > 1:
            parts.append(f'<text x="{width - right - 4}" y="{top + 12 + 13 * i}" text-anchor="end" '
                         f'fill="{color}" class="tick">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def curve_charts(metrics: list[dict]) -> list[str]:
    """One chart per entry of `CURVES` whose metrics the run logged, against the step."""
    charts = []
    for title, names in CURVES:
        series = {name: [(row["step"], v) for row in metrics
                         if isinstance(row.get("step"), int) and (v := _number(row.get(name))) is not None]
                  for name in names}
        series = {name: values for name, values in series.items() if values}
        if series:
            charts.append(svg_chart(series, title, "step", title))
    return charts


def sample_rows(samples: list[dict], budget: int = SAMPLE_BUDGET_BYTES) -> tuple[list[list], int]:
    """Rows (method, prompt, completion, reward) for the table, texts cut to `MAX_TEXT_CHARS`, taken evenly across
    `samples` until their JSON reaches `budget` bytes; with how many there were."""

    def cut(value) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"

    def row(sample: dict) -> list:
        method = next((sample[key] for key in ("method", "model", "configuration", "k") if key in sample), "")
        completion = sample.get("completion", sample.get("continuation", ""))
        return [cut(method), cut(sample.get("prompt", "")), cut(completion), _number(sample.get("reward"))]

    if not samples:
        return [], 0
    average = max(1, sum(len(json.dumps(row(s))) for s in samples[:200]) // min(200, len(samples)))
    keep = min(len(samples), max(1, budget // (average + 2)))
    step = len(samples) / keep
    rows, used = [], 0
    for i in range(keep):
        made = row(samples[int(i * step)])
        used += len(json.dumps(made)) + 2
        if used > budget and rows:
            break
        rows.append(made)
    return rows, len(samples)


def environment(run_dir: Path, config_text: str) -> dict:
    """Versions, hardware, seed, precision and code version of the run (what the folder recorded, and this
    machine's library versions)."""
    import torch
    import transformers

    header = next((line[2:] for line in config_text.splitlines() if line.startswith("# alignlab")), None)
    seed = next((line.split(":", 1)[1].strip() for line in config_text.splitlines() if line.strip().startswith(
        "seed:")), None)
    precision = None
    if (run_dir / "precision.json").is_file():
        try:
            precision = json.loads((run_dir / "precision.json").read_text(encoding="utf-8"))
        except ValueError:
            precision = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"code version": header or f"alignlab {alignlab.__version__}", "seed": seed,
            "precision": (f"{precision.get('precision')} ({precision.get('reason')})"
                          if isinstance(precision, dict) else None),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "gpu": gpu,
            "report made on": platform.node()}


def training_folder(run_dir: Path) -> Path | None:
    """The folder whose metrics.jsonl the curves come from: the run itself, or a training run one level down."""
    if (run_dir / "metrics.jsonl").is_file():
        return run_dir
    found = sorted(p.parent for p in run_dir.glob("*/metrics.jsonl"))
    return found[0] if found else None


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd}
.charts{display:flex;flex-wrap:wrap;gap:10px}.chart{background:#fafafa;border:1px solid #e5e5e5}
.chart .title{font-weight:600;font-size:12px}.chart .tick,.chart .point{font-size:10px;fill:#444}
.axis{stroke:#999}table{border-collapse:collapse;width:100%;table-layout:fixed}
td,th{border:1px solid #e3e3e3;padding:4px 6px;vertical-align:top;text-align:left;word-wrap:break-word}
th{background:#f3f3f3}.num{text-align:right;width:80px}th.method{width:150px}
pre{background:#f6f6f6;padding:10px;overflow:auto;max-height:420px}.note{color:#666}
#pager button{margin:0 4px}input#search{width:320px;padding:3px}dl{display:grid;grid-template-columns:180px 1fr}
dt{font-weight:600}dd{margin:0 0 4px}
"""

SCRIPT = """
(function(){
  var rows = JSON.parse(document.getElementById('sample-data').textContent);
  var body = document.getElementById('sample-body'), info = document.getElementById('page-info');
  var search = document.getElementById('search'), page = 0, shown = rows, size = PAGE_ROWS;
  function cell(tr, text, cls){var td=document.createElement('td');td.textContent=text;if(cls)td.className=cls;
    tr.appendChild(td);}
  function draw(){
    while(body.firstChild) body.removeChild(body.firstChild);
    var pages = Math.max(1, Math.ceil(shown.length/size)); page = Math.min(page, pages-1);
    shown.slice(page*size, page*size+size).forEach(function(r){var tr=document.createElement('tr');
      cell(tr,r[0]);cell(tr,r[1]);cell(tr,r[2]);cell(tr,r[3]===null?'':r[3].toFixed(3),'num');body.appendChild(tr);});
    info.textContent = 'page ' + (page+1) + ' of ' + pages + ' (' + shown.length + ' rows)';
  }
  search.addEventListener('input', function(){var q=search.value.toLowerCase();
    shown = q ? rows.filter(function(r){return (r[0]+' '+r[1]+' '+r[2]).toLowerCase().indexOf(q) >= 0;}) : rows;
    page = 0; draw();});
  document.getElementById('prev').addEventListener('click', function(){if(page>0){page--;draw();}});
  document.getElementById('next').addEventListener('click', function(){page++;draw();});
  draw();
})();
""".replace("PAGE_ROWS", str(PAGE_ROWS))


def _result_section(run_dir: Path) -> str:
    """A diagnostic's or an evaluation's folder: its result.json and pictures (inline)."""
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        return ""
    text = result_path.read_text(encoding="utf-8", errors="replace")
    shown = text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + "\n… (cut; see result.json)"
    pictures = [f"<img alt='{html.escape(picture.name)}' style='max-width:560px;border:1px solid #e5e5e5' "
                f"src='data:image/png;base64,{base64.b64encode(picture.read_bytes()).decode()}'>"
                for picture in sorted(run_dir.glob("*.png"))
                if picture.name != "report.png" and picture.stat().st_size <= MAX_PICTURE_BYTES]
    return f"<h2>Result</h2><pre id='result'>{html.escape(shown)}</pre><div class='charts'>{''.join(pictures)}</div>"


def _frontier_section(points: list[dict], run_dir: Path, training: bool) -> str:
    if not points:
        if training:
            why = "a training run: see the curves"
        elif (run_dir / "methods").is_dir():
            why = ("a decoding run that has not finished: its summary.json is written when every method is done; "
                   "<code>alignlab decode … --resume</code> continues it")
        else:
            why = "no summary.json with reward and KL"
        return (f"<h2>Reward–KL frontier</h2><p class='note'>This run has no frontier points ({why}; "
                "<code>alignlab compare</code> puts runs side by side).</p>")
    chart = svg_chart({"methods": [(p["kl"], p["reward"]) for p in points]}, "reward against KL(π ‖ π_ref)",
                      "KL (nats)", "reward", points_only=True, labels=[p["label"] for p in points],
                      element_id="frontier")
    table = "".join(f"<tr><td>{html.escape(p['label'])}</td><td class='num'>{p['reward']:.3f}</td>"
                    f"<td class='num'>{p['kl']:.3f}</td><td>{html.escape(str(p['kl_kind'] or ''))}</td></tr>"
                    for p in points)
    return (f"<h2>Reward–KL frontier</h2><div class='charts'>{chart}</div><table id='frontier-table'><tr>"
            f"<th>method</th><th>reward</th><th>KL</th><th>KL is</th></tr>{table}</table>")


def _samples_section(rows: list[list], total: int, file: str = "samples.jsonl") -> str:
    if not rows:
        return "<h2>Samples</h2><p class='note'>No samples.jsonl in this run.</p>"
    note = (f"showing {len(rows):,} of {total:,} samples (evenly spaced; all in {file})"
            if len(rows) < total else f"{total:,} samples (from {file})")
    data = json.dumps(rows).replace("<", "\\u003c")  # no text can end or re-open the script element
    return (f"<h2>Samples</h2><p class='note' id='sample-note'>{note}; texts longer than {MAX_TEXT_CHARS} characters "
            "are cut</p><p><input id='search' type='search' placeholder='search prompts, completions, methods'> "
            "<span id='pager'><button id='prev'>◀</button><span id='page-info'></span>"
            "<button id='next'>▶</button></span></p>"
            "<table id='samples'><thead><tr><th class='method'>method</th><th>prompt</th><th>completion</th>"
            "<th class='num'>reward</th></tr></thead><tbody id='sample-body'></tbody></table>"
            f"<script id='sample-data' type='application/json'>{data}</script><script>{SCRIPT}</script>")


def _read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def render(run_dir: Path) -> str:
    """The page of `run_dir`, from its files alone."""
    training = training_folder(run_dir)
    config_path = next((p for p in (run_dir / "config.yaml", (training or run_dir) / "config.yaml") if p.is_file()),
                       None)
    config_text = config_path.read_text(encoding="utf-8") if config_path else ""
    metrics = read_jsonl(training / "metrics.jsonl") if training else []
    rounds = read_jsonl(run_dir / "online.jsonl")
    points = frontier_points(_read_summary(run_dir)) + online_points(rounds)
    charts = ([online_curves(rounds)] if rounds else []) + curve_charts(metrics)
    samples = "rows.jsonl" if (run_dir / "rows.jsonl").is_file() and not (run_dir / "samples.jsonl").is_file() \
        else "samples.jsonl"  # a red-teaming run's per-record rows
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
           "script-src 'unsafe-inline'; img-src data:\">",
           f"<title>alignlab report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>",
           f"<h1>alignlab run <code>{html.escape(run_dir.name)}</code></h1>",
           f"<p class='note'>{html.escape(str(run_dir.resolve()))}</p>",
           _result_section(run_dir), _frontier_section(points, run_dir, training is not None),
           "<h2>Training curves</h2>",
           f"<div class='charts' id='curves'>{''.join(charts)}</div>" if charts
           else "<p class='note'>No metrics.jsonl in this run.</p>",
           _samples_section(*sample_rows(read_jsonl(run_dir / samples)), samples),
           f"<h2>Config</h2><pre id='config'>{html.escape(config_text) or '(no config.yaml)'}</pre><h2>Environment</h2>"
           "<dl>", *(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                     for k, v in environment(training or run_dir, config_text).items()), "</dl>"]
    report = (training or run_dir) / "data_report.json"
    if report.is_file():
        out.append(f"<h2>Data</h2><pre>{html.escape(report.read_text(encoding='utf-8'))}</pre>")
    out.append("</body></html>")
    return "".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into `run_dir` (from its files alone) and return its path."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a run folder")
    names = ("config.yaml", "metrics.jsonl", "summary.json", "samples.jsonl", "result.json", "online.jsonl")
    if not any((folder / name).exists() for name in names) and training_folder(folder) is None:
        raise ConfigError(f"{folder} holds no run (none of {', '.join(names)})")
    path = folder / "report.html"
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(render(folder), encoding="utf-8")
    temporary.replace(path)
    return path


def write_report_safely(folder: Path, say=print) -> str:
    """``report.html`` of a finished run (", report in …"); a report that fails is said, never fails the run."""
    try:
        return f", report in {write_report(folder)}"
    except Exception as error:
        say(f"report.html could not be written ({type(error).__name__}: {error}); `alignlab report {folder}` retries")
        return ""
