"""`alignlab compare RUN_DIR... --out DIR`: several runs on one page — their methods on one reward–KL frontier, one
table (run, method, objective, β, reward, KL, time), the headline numbers of evaluation and attack runs beside them
(steerability per method, honesty per model, …), and their training curves overlaid. Writes ``compare.html``
(self-contained, like ``report.html``), ``compare.json`` and ``compare.png`` (the frontier) into `out`."""

from __future__ import annotations

import html
import json
from pathlib import Path

import yaml

from alignlab.errors import ConfigError
from alignlab.report.card import objective_params
from alignlab.report.html import (
    CURVES,
    STYLE,
    _number,
    frontier_points,
    left_out_points,
    read_jsonl,
    svg_chart,
    training_folder,
)
from alignlab.report.plots import pyplot, save_figure
from alignlab.run_folder import RunFolder


def run_facts(run_dir: Path) -> dict:
    """What one run folder says about itself: its name, objective and β, seconds, frontier points, metrics."""
    training = training_folder(run_dir)
    config_path = next((p for p in (run_dir / "config.yaml", (training or run_dir) / "config.yaml") if p.is_file()),
                       None)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path else {}
    config = config if isinstance(config, dict) else {}
    objective = config.get("objective") or {}
    objective = objective[0] if isinstance(objective, list) and objective else objective
    summary = {}
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except ValueError:
            raise ConfigError(f"{run_dir / 'summary.json'} is not valid JSON") from None
    metrics = read_jsonl(training / "metrics.jsonl") if training else []
    seconds = summary.get("seconds") or next((row["elapsed_s"] for row in reversed(metrics) if "elapsed_s" in row),
                                             None)
    params = objective_params(objective) if isinstance(objective, dict) else {}
    return {"run": run_dir.name, "path": str(run_dir), "objective": objective.get("name") if isinstance(objective, dict)
            else None, "beta": params.get("beta"), "seconds": seconds, "points": frontier_points(summary),
            "left_out": left_out_points(summary), "metrics": metrics, "headline": headline(run_dir)}


def headline(run_dir: Path) -> dict:
    """An evaluation's or an attack's headline numbers ({group: {measure: value}}, its result.json's
    ``headline_numbers``: steerability per method, honesty per model, ASR per instruction, …), or {} for other runs."""
    try:
        found = json.loads((run_dir / "result.json").read_text(encoding="utf-8")).get("headline_numbers", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(group): {str(k): v for k, v in values.items() if isinstance(v, int | float) or v is None}
            for group, values in found.items() if isinstance(values, dict)} if isinstance(found, dict) else {}


def headline_table(runs: list[dict]) -> str:
    """The evaluations' and attacks' headline numbers, one row per (run, group), one column per measure; "" when
    no run has any."""
    measured = [run for run in runs if run["headline"]]
    if not measured:
        return ""
    columns = list(dict.fromkeys(name for run in measured for values in run["headline"].values() for name in values))
    rows = "".join(f"<tr><td>{_cell(run['run'])}</td><td>{_cell(group)}</td>"
                   + "".join(f"<td class='num'>{_cell(values.get(name))}</td>" for name in columns) + "</tr>"
                   for run in measured for group, values in run["headline"].items())
    return ("<h2>Evaluations and attacks</h2><table id='headline-table'><tr><th>run</th><th>method / model</th>"
            + "".join(f"<th>{html.escape(name)}</th>" for name in columns) + f"</tr>{rows}</table>")


def table_rows(runs: list[dict]) -> list[dict]:
    """One row per (run, method): the run's objective, β and time beside each method's reward and KL; a training run
    without frontier points gets one row with its last logged loss (an evaluation's numbers: `headline_table`)."""
    rows = []
    for run in runs:
        base = {"run": run["run"], "objective": run["objective"], "beta": run["beta"], "seconds": run["seconds"]}
        if run["points"]:
            rows += [{**base, "method": p["label"], "reward": p["reward"], "kl": p["kl"], "kl_kind": p["kl_kind"]}
                     for p in run["points"]]
        elif not run["headline"]:  # an evaluation's numbers have a table of their own
            last = next((row for row in reversed(run["metrics"]) if "loss" in row), {})
            rows.append({**base, "method": "(training)", "reward": None, "kl": None, "kl_kind": None,
                         "final_loss": last.get("loss")})
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def render(runs: list[dict], rows: list[dict]) -> str:
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">",
           f"<title>alignlab compare</title><style>{STYLE}</style></head><body>",
           f"<h1>alignlab: {len(runs)} runs compared</h1><h2>Reward–KL frontier</h2>"]
    series = {run["run"]: [(p["kl"], p["reward"]) for p in run["points"]] for run in runs if run["points"]}
    if series:
        chart = svg_chart(series, "reward against KL(π ‖ π_ref)", "KL (nats)", "reward", points_only=True,
                          element_id="frontier")
        out.append(f"<div class='charts'>{chart}</div>")
    else:
        out.append("<p class='note'>None of these runs has frontier points (demo and decode runs do).</p>")
    columns = ("run", "method", "objective", "beta", "reward", "kl", "kl_kind", "seconds", "final_loss")
    out.append("<table id='compare-table'><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>")
    out += ["<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows]
    out.append("</table>" + headline_table(runs) + "<h2>Training curves</h2><div class='charts' id='curves'>")
    for title, names in CURVES:
        overlaid = {f"{run['run']} {name}": [(row["step"], value) for row in run["metrics"]
                                             if isinstance(row.get("step"), int)
                                             and (value := _number(row.get(name))) is not None]
                    for run in runs for name in names[:1]}
        overlaid = {key: values for key, values in overlaid.items() if values}
        if overlaid:
            out.append(svg_chart(overlaid, title, "step", title))
    out.append("</div></body></html>")
    return "".join(out)


def plot_frontier_png(runs: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for run in runs:
        if run["points"]:
            ax.scatter([p["kl"] for p in run["points"]], [p["reward"] for p in run["points"]], label=run["run"])
            for p in run["points"]:
                ax.annotate(p["label"], (p["kl"], p["reward"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("KL(π ‖ π_ref) (nats)")
    ax.set_ylabel("reward")
    ax.set_title("Runs on one frontier")
    if any(run["points"] for run in runs):
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def check_apart(folders: list[Path], out: Path) -> None:
    """ConfigError when the output folder is one of the compared runs, inside one, or holds one: writing it (or
    clearing it with --overwrite) would touch a run."""
    target = out.resolve()
    for folder in folders:
        run = folder.resolve()
        where = "one of the runs compared" if target == run else f"inside or around the run {folder}"
        if target == run or run in target.parents or target in run.parents:
            raise ConfigError(f"--out {out} is {where}: write the comparison into a folder of its own")


def compare(run_dirs: list[str], out: str, overwrite: bool = False, log=print) -> dict:
    """Compare `run_dirs` (each a run folder) into the folder `out`."""
    folders = [Path(d) for d in run_dirs]
    if len(folders) < 2:
        raise ConfigError("compare needs at least two run folders")
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a run folder")
        if not any((folder / n).exists() for n in ("config.yaml", "summary.json", "result.json")) and \
                not training_folder(folder):
            raise ConfigError(f"{folder} holds no run (no config.yaml, summary.json, result.json or metrics.jsonl)")
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        raise ConfigError(f"runs must have different folder names to be told apart, got {names}")
    check_apart(folders, Path(out))
    target = RunFolder(out)
    target.check_usable(resume=False, overwrite=overwrite)
    runs = [run_facts(folder) for folder in folders]
    for run in runs:
        if run["left_out"]:
            log(f"{run['run']}: {len(run['left_out'])} frontier points left out, their reward or KL not a finite "
                f"number ({', '.join(run['left_out'])})")
    rows = table_rows(runs)
    with target.writing(overwrite):
        target.write_json("compare.json", {"runs": [{k: v for k, v in r.items() if k != "metrics"} for r in runs],
                                           "table": rows})
        target.file("compare.html").write_text(render(runs, rows), encoding="utf-8")
        plot_frontier_png(runs, target.file("compare.png"))
    log(f"compared {len(runs)} runs ({sum(len(r['points']) for r in runs)} frontier points); wrote "
        f"{target.file('compare.html')}, {target.file('compare.json')}, {target.file('compare.png')}")
    return {"runs": runs, "table": rows}
