"""`report.html`: one self-contained page per run folder — what the folder is, the reward–KL frontier, the
training curves, the per-record files (samples, rows, scores; searchable, paginated), the config and the
environment.

Everything is inline (charts as SVG drawn by `alignlab.report.svg`, a few lines of plain JavaScript for the tables,
no library, no font, no image from elsewhere) and a Content-Security-Policy forbids the page any network access,
so it opens the same offline, from an e-mail attachment or a CI artifact. It is re-created from the run folder
alone (`alignlab report RUN_DIR`): ``config.yaml``, ``metrics.jsonl`` (also a training run one folder down, as the
demo's ``dpo/`` or an online run's ``train/``), ``summary.json`` (the demo's and ``alignlab decode``'s frontier
points), ``online.jsonl`` and ``rounds/round-NNN/`` (an online run), the per-record files of `rows.ROW_FILES`,
``precision.json``, ``data_report.json``, and a diagnostic's, evaluation's, attack's or data run's
``result.json`` and PNGs.

Each table carries at most its share of `SAMPLE_BUDGET_BYTES` of rows (texts cut to `MAX_TEXT_CHARS`), taken
evenly across the file, and says how many of how many it shows: a run with 100k samples gives a page of a few MB.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import platform
import re
from pathlib import Path

import yaml

import alignlab
from alignlab.errors import ConfigError
from alignlab.report.rows import (
    MAX_TEXT_CHARS,
    PAGE_ROWS,
    ROW_FILES,
    SAMPLE_BUDGET_BYTES,
    read_jsonl,
    rows_section,
    sample_rows,
)
from alignlab.report.rows import number as _number
from alignlab.report.svg import KL_KINDS, frontier_chart, line_chart, marker

__all__ = ["CURVES", "MAX_TEXT_CHARS", "PAGE_ROWS", "SAMPLE_BUDGET_BYTES", "STYLE", "frontier_points",
           "left_out_points", "read_jsonl", "render", "sample_rows", "svg_chart", "training_folder",
           "write_report", "write_report_safely"]

MAX_RESULT_CHARS = 200_000
MAX_PICTURE_BYTES = 1_000_000
FULL_LINES = 400

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

SERIES_NAMES = {"loss": "train", "eval/loss": "eval", "rewards/margins": "train", "eval/rewards/margins": "eval",
                "rewards/accuracies": "train", "eval/rewards/accuracies": "eval", "lr": "learning rate",
                "grad_norm": "gradient norm", "skipped_steps": "skipped steps",
                "displacement/chosen_logp_delta": "chosen", "displacement/rejected_logp_delta": "rejected"}
"""The colour key's name of each metric."""

ZERO_LINES = {"reward margin": "above 0: the chosen response scored above the rejected one",
              "log-prob drift vs the reference (nats)": "below 0: less likely than under the reference"}
"""The charts whose sign matters: drawn with a zero line and the mean of their last steps said under them."""

LAST_STEPS = 20

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;
padding:0 10px}h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:14px 0 4px}.charts{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0}
figcaption{font-size:12px;color:#444;max-width:370px}.chart{background:#fafafa;border:1px solid #e5e5e5;
max-width:100%;height:auto}.chart .title{font-weight:600}.chart text{fill:#333}.chart .key-head{font-weight:600}
.grid{stroke:#e4e4e4}.axis{stroke:#888}.zero{stroke:#222;stroke-dasharray:4 3}.leader{stroke:#999}
table{border-collapse:collapse;width:100%;table-layout:fixed}
td,th{border:1px solid #e3e3e3;padding:4px 6px;vertical-align:top;text-align:left;word-wrap:break-word}
th{background:#f3f3f3}.num{text-align:right;width:80px}th.method{width:150px}
pre{background:#f6f6f6;padding:10px;white-space:pre-wrap;word-break:break-word}pre.scroll{max-height:70vh;
overflow:auto;resize:vertical}.note{color:#666}.pager button{margin:0 4px}input[type=search]{width:320px;padding:3px}
dl{display:grid;grid-template-columns:180px 1fr}dt{font-weight:600}dd{margin:0 0 4px}ul.kinds{margin:4px 0;
padding-left:18px;list-style:none}ul.kinds svg{vertical-align:-2px;margin-right:6px}.flat{margin:2px 0}
"""


def online_points(rounds: list[dict]) -> list[dict]:
    """(label, KL, reward) of each evaluated round of an online run's online.jsonl (held-out reward, sampled KL)."""
    return [{"label": f"round {r.get('round')}", "kl": kl, "reward": reward, "kl_kind": "sampled",
             "family": "online rounds (held-out)", "n": r.get("round") if isinstance(r.get("round"), int) else None}
            for r in rounds if isinstance(r.get("eval"), dict)
            and (kl := _number(r["eval"].get("kl"))) is not None
            and (reward := _number(r["eval"].get("reward_mean"))) is not None]


FAMILIES = {"best_of_n": "best-of-N", "worst_of_n": "worst-of-N", "args": "ARGS", "tq_star": "Transfer Q*",
            "deal": "DeAL", "infalign": "InfAlign", "urial": "URIAL"}
"""Decoding methods' family names on the frontier (the others keep their method name)."""


def family_of(label: str, method: str | None = None) -> tuple[str, int | None]:
    """(family, N) of a frontier point: its method's family (best-of-16 and best-of-4 are one), and its N where
    the label or method names one."""
    found = re.match(r"(best|worst)-of-(\d+)", label)
    n = int(found.group(2)) if found else None
    if method:
        return FAMILIES.get(method, method), n
    if found:
        return f"{found.group(1)}-of-N", n
    return label.split(" (")[0], n


def _summary_points(summary: dict) -> list[dict]:
    """Every method of a demo's or a decode run's summary.json, as it stands, with its family, N and short label."""
    points = []
    if isinstance(summary.get("reference"), dict):
        points.append({"label": "reference", "kl_kind": "exact", "family": "reference", **summary["reference"]})
    if isinstance(summary.get("dpo"), dict):  # the demo's trained policy: KL sampled from its own completions
        points.append({"label": "DPO", "kl_kind": "sampled", "family": "DPO (trained)", **summary["dpo"]})
    for n, point in (summary.get("best_of_n") or {}).items():
        kind = "bound" if point.get("kl_is_upper_bound") else None
        points.append({"label": f"best-of-{n}", "short": f"N={n}", "family": "best-of-N", "kl_kind": kind,
                       "n": int(n) if str(n).isdigit() else None, **point})
    for label, point in (summary.get("decoding") or {}).items():
        family, n = family_of(label)
        points.append({"label": label, "family": family, "n": n, **point})
    for point in summary.get("methods") or []:
        family, n = family_of(str(point.get("label", "?")), point.get("method"))
        points.append({"family": family, "n": n, **point})
    return points


def frontier_points(summary: dict) -> list[dict]:
    """(label, KL, reward, how the KL is known, family, N, short label) of every method in a demo's or a decode
    run's summary.json whose KL and reward are finite numbers (`left_out_points` names the others)."""
    return [{"label": str(p.get("label", "?")), "kl": _number(p.get("kl")), "reward": _number(p.get("reward")),
             "kl_kind": p.get("kl_kind"), "family": p.get("family") or str(p.get("label", "?")),
             "n": p.get("n"), "short": p.get("short")} for p in _summary_points(summary)
            if _number(p.get("kl")) is not None and _number(p.get("reward")) is not None]


def left_out_points(summary: dict) -> list[str]:
    """The labels of the methods `frontier_points` leaves out: a KL or reward that is not a finite number."""
    return [str(p.get("label", "?")) for p in _summary_points(summary)
            if _number(p.get("kl")) is None or _number(p.get("reward")) is None]


def svg_chart(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
              points_only: bool = False, labels: list[str] | None = None, element_id: str = "") -> str:
    """A line chart (`svg.line_chart`) or, `points_only`, a frontier of one family per series (labelled by
    `labels` when given) — the charts of ``alignlab compare``."""
    if not points_only:
        return line_chart(series, title, xlabel, ylabel, zero_line=title in ZERO_LINES)
    points = [{"label": labels[j] if labels else name, "short": labels[j] if labels else "", "family": name,
               "kl": x, "reward": y, "kl_kind": "sampled"} for name, values in series.items()
              for j, (x, y) in enumerate(values)]
    return frontier_chart(points, element_id or "frontier", kinds=False)[0]


def series_of(metrics: list[dict], names: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    """Each logged metric of `names` against the step, keyed by its colour-key name."""
    series = {SERIES_NAMES.get(name, name): [(row["step"], v) for row in metrics if isinstance(row.get("step"), int)
                                             and (v := _number(row.get(name))) is not None] for name in names}
    return {name: values for name, values in series.items() if values}


def flat_note(series: dict[str, list[tuple[float, float]]], title: str, unit: str = "step") -> str:
    """One line for a chart that would draw nothing but a flat line (every value the same), else ''."""
    values = {y for points in series.values() for _, y in points}
    if len(values) != 1:
        return ""
    count = max(len(points) for points in series.values())
    return (f"<p class='note flat'><b>{html.escape(title)}</b>: {next(iter(values)):.4g} at every one of the "
            f"{count:,} logged {unit}s (no chart)</p>")


def last_steps_caption(series: dict[str, list[tuple[float, float]]], title: str) -> str:
    """Under a chart whose sign matters: each series' mean over its last `LAST_STEPS` points, and what the sign
    means."""
    means = [f"{html.escape(name)} <b>{sum(y for _, y in values[-LAST_STEPS:]) / len(values[-LAST_STEPS:]):+.2f}</b>"
             for name, values in series.items()]
    count = min(LAST_STEPS, max(len(v) for v in series.values()))
    return f"<figcaption>mean of the last {count} logged steps: {', '.join(means)} ({ZERO_LINES[title]})</figcaption>"


def curve_charts(metrics: list[dict]) -> list[str]:
    """One figure per entry of `CURVES` whose metrics the run logged, against the step (a line instead where
    every value is the same)."""
    out = []
    for title, names in CURVES:
        series = series_of(metrics, names)
        if not series:
            continue
        flat = flat_note(series, title)
        if flat:
            out.append(flat)
            continue
        caption = last_steps_caption(series, title) if title in ZERO_LINES else ""
        ylabel = "Δ log-prob (nats)" if title.startswith("log-prob drift") else title
        out.append(f"<figure>{line_chart(series, title, 'step', ylabel, zero_line=title in ZERO_LINES)}"
                   f"{caption}</figure>")
    return out


def online_curves(rounds: list[dict]) -> list[str]:
    """The rounds of an online run: reward, and sampled KL to the initial model, each on its own axis, of each
    round's training samples and held-out prompts."""
    out = []
    for title, key, unit in (("online rounds: mean reward", "reward_mean", "reward"),
                             ("online rounds: sampled KL to the initial model", "kl", "KL (nats)")):
        series = {f"{what} {'samples' if part == 'samples' else 'held-out'}": values
                  for what, part in (("round", "samples"), ("round", "eval"))
                  if (values := [(r["round"], v) for r in rounds if isinstance(r.get(part), dict)
                                 and isinstance(r.get("round"), int) and (v := _number(r[part].get(key))) is not None])}
        if series:
            out.append(flat_note(series, title, "round") or f"<figure>{line_chart(series, title, 'round', unit)}"
                                                             "</figure>")
    return out


def config_seed(config_text: str) -> object:
    """The seed a config sets (``seed:`` at the top, or in ``train:``), or None."""
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return None
    if not isinstance(config, dict):
        return None
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    return config.get("seed", train.get("seed"))


def environment(run_dir: Path, config_text: str, seed: object = None) -> dict:
    """Versions, hardware, seed, precision and code version of the run (what the folder recorded, and this
    machine's library versions); what is not known is left out."""
    import torch
    import transformers

    header = next((line[2:] for line in config_text.splitlines() if line.startswith("# alignlab")), None)
    seed = config_seed(config_text) if config_seed(config_text) is not None else seed
    try:
        precision = json.loads((run_dir / "precision.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        precision = None
    facts = {"code version": header or f"alignlab {alignlab.__version__} (this report's; the run did not say)",
             "seed": seed, "precision": (f"{precision.get('precision')} ({precision.get('reason')})"
                                         if isinstance(precision, dict) else None),
             "python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__,
             "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
             "report made on": platform.node()}
    return {key: value for key, value in facts.items() if value not in (None, "")}


def training_folder(run_dir: Path) -> Path | None:
    """The folder whose metrics.jsonl the curves come from: the run itself, or a training run one level down."""
    if (run_dir / "metrics.jsonl").is_file():
        return run_dir
    found = sorted(p.parent for p in run_dir.glob("*/metrics.jsonl"))
    return found[0] if found else None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def folder_kind(run_dir: Path, summary: dict, training: Path | None, rounds: list[dict]) -> tuple[str, str]:
    """(kind, a line saying what the folder holds): online (`rounds`: its online.jsonl), decode, demo, result (a
    diagnostic, evaluation, attack or data run), training, or run."""
    if rounds or (run_dir / "rounds").is_dir():
        trained = sum("samples" in r or "train" in r for r in rounds)  # round 0 evaluates the initial model only
        return "online", (f"An online run: {trained} round{'s' * (trained != 1)} of sampling, scoring and training"
                          f"{', after evaluating the initial model (round 0)' if len(rounds) > trained else ''} "
                          "(online.jsonl; each round's samples in rounds/round-NNN/).")
    if "methods" in summary or (run_dir / "methods").is_dir():
        return "decode", "A decoding run: every method on one prompt set, judged by one reward (summary.json)."
    if "dpo" in summary or "best_of_n" in summary:
        where = f" (training in {training.name}/)" if training and training != run_dir else ""
        return "demo", f"The demo: DPO, best-of-N and decoding-time methods on one reward–KL frontier{where}."
    if (run_dir / "result.json").is_file():
        held = [name for name in (*ROW_FILES, "result.json") if (run_dir / name).is_file()]
        return "result", (f"A diagnostic, evaluation, attack or data run: {', '.join(held)}"
                          f"{' and pictures' if any(run_dir.glob('*.png')) else ''}.")
    if training:
        return "training", "A training run: its curves from metrics.jsonl."
    return "run", "A run folder."


def _pre(element_id: str, text: str) -> str:
    """A text block shown whole (wrapped), or in a box that scrolls when it runs past `FULL_LINES` lines."""
    scroll = " class='scroll'" if text.count("\n") > FULL_LINES else ""
    return f"<pre id='{element_id}'{scroll}>{html.escape(text)}</pre>"


def _result_section(run_dir: Path) -> str:
    """A diagnostic's, evaluation's, attack's or data run's result.json (indented) and pictures (inline)."""
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        return ""
    text = result_path.read_text(encoding="utf-8", errors="replace")
    with contextlib.suppress(ValueError):
        text = json.dumps(json.loads(text), indent=1, ensure_ascii=False)
    shown = text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + "\n… (cut; see result.json)"
    pictures = [f"<img alt='{html.escape(picture.name)}' style='max-width:560px;border:1px solid #e5e5e5' "
                f"src='data:image/png;base64,{base64.b64encode(picture.read_bytes()).decode()}'>"
                for picture in sorted(run_dir.glob("*.png"))
                if picture.name != "report.png" and picture.stat().st_size <= MAX_PICTURE_BYTES]
    return f"<h2>Result</h2><div class='charts'>{''.join(pictures)}</div>{_pre('result', shown)}"


def kinds_legend(points: list[dict]) -> str:
    """What each KL kind on the frontier means, with its marker."""
    items = []
    for kind in dict.fromkeys(p.get("kl_kind") for p in points):
        name, meaning = KL_KINDS.get(kind, KL_KINDS[None])
        items.append(f"<li><svg width='16' height='16' viewBox='0 0 16 16'>{marker(kind, 8, 8, '#555', css='k')}"
                     f"</svg><b>{html.escape(name)}</b>: {html.escape(meaning)}</li>")
    return f"<ul class='kinds'>{''.join(items)}</ul>"


def _frontier_section(points: list[dict], kind: str, run_dir: Path) -> str:
    """The frontier, the meaning of its markers, and its table; for a decode, demo or online run without points,
    why."""
    if not points:
        if kind == "decode" and not (run_dir / "summary.json").is_file():
            why = ("a decoding run that has not finished: its summary.json is written when every method is done; "
                   "<code>alignlab decode … --resume</code> continues it")
        elif kind in ("decode", "demo", "online"):
            why = "no method with a finite reward and KL yet"
        else:
            return ""
        return f"<h2>Reward–KL frontier</h2><p class='note'>This run has no frontier points ({why}).</p>"
    chart, unnamed = frontier_chart(points)
    left = ("<p class='note' id='unlabelled'>No room on the chart for the labels of: "
            + "; ".join(f"{i} = {html.escape(points[i - 1]['label'])}" for i in unnamed) + " (numbers as in the "
            "table)</p>") if unnamed else ""
    table = "".join(f"<tr><td class='num'>{i}</td><td>{html.escape(p['label'])}</td><td class='num'>"
                    f"{p['reward']:.3f}</td><td class='num'>{p['kl']:.3f}</td><td>"
                    f"{html.escape(KL_KINDS.get(p['kl_kind'], KL_KINDS[None])[0])}</td></tr>"
                    for i, p in enumerate(points, 1))
    return (f"<h2>Reward–KL frontier</h2><div class='charts'>{chart}</div>{left}{kinds_legend(points)}"
            "<table id='frontier-table'><tr><th class='num'>#</th><th>method</th><th class='num'>reward</th>"
            f"<th class='num'>KL</th><th>KL is</th></tr>{table}</table>")


def _curves_section(metrics: list[dict], rounds: list[dict], kind: str) -> str:
    """The online rounds' and the training run's charts (flat ones as a line each)."""
    parts = online_curves(rounds) + curve_charts(metrics)
    if not parts:
        return "<h2>Training curves</h2><p class='note'>No metrics.jsonl in this run.</p>" if kind == "training" \
            else ""
    charts = "".join(part for part in parts if part.startswith("<figure"))
    notes = "".join(part for part in parts if not part.startswith("<figure"))
    return f"<h2>{'Rounds and training' if rounds else 'Training'} curves</h2><div class='charts' id='curves'>" \
           f"{charts}</div>{notes}"


def _config_section(config_text: str, settings: dict) -> str:
    """The run's config.yaml, whole; else the settings its result.json or summary.json recorded; else nothing."""
    if config_text:
        return f"<h2>Config</h2>{_pre('config', config_text)}"
    if settings:
        return f"<h2>Settings</h2>{_pre('config', json.dumps(settings, indent=1, ensure_ascii=False))}"
    return ""


def _head(run_dir: Path, description: str) -> list[str]:
    return ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src data:\">",
            f"<title>alignlab report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>",
            f"<h1>alignlab run <code>{html.escape(run_dir.name)}</code></h1>",
            f"<p id='kind'>{html.escape(description)}</p><p class='note'>{html.escape(str(run_dir.resolve()))}</p>"]


def render(run_dir: Path) -> str:
    """The page of `run_dir`, from its files alone."""
    training = training_folder(run_dir)
    summary = _read_json(run_dir / "summary.json")
    rounds = read_jsonl(run_dir / "online.jsonl")
    kind, description = folder_kind(run_dir, summary, training, rounds)
    config_path = next((p for p in (run_dir / "config.yaml", (training or run_dir) / "config.yaml") if p.is_file()),
                       None)
    config_text = config_path.read_text(encoding="utf-8") if config_path else ""
    settings = _read_json(run_dir / "result.json").get("settings") or summary.get("settings") or {}
    settings = settings if isinstance(settings, dict) else {}
    points = frontier_points(summary) + online_points(rounds)
    out = [*_head(run_dir, description), _result_section(run_dir), _frontier_section(points, kind, run_dir),
           _curves_section(read_jsonl(training / "metrics.jsonl") if training else [], rounds, kind),
           rows_section(run_dir), _config_section(config_text, settings), "<h2>Environment</h2><dl>",
           *(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
             for k, v in environment(training or run_dir, config_text, settings.get("seed")).items()), "</dl>"]
    report = (training or run_dir) / "data_report.json"
    if report.is_file():
        out.append(f"<h2>Data</h2>{_pre('data-report', report.read_text(encoding='utf-8'))}")
    out.append("</body></html>")
    return "".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into `run_dir` (from its files alone) and return its path."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a run folder")
    names = ("config.yaml", "metrics.jsonl", "summary.json", "result.json", "online.jsonl", *ROW_FILES)
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
