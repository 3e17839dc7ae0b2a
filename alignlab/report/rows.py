"""The per-record tables of a report page: samples, an attack's or evaluation's rows, a diagnostic's scores and
filtered records, an online run's samples of every round — each searchable, 25 a page, at most a budget of
bytes taken evenly across its file, saying how many of how many it shows."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

SAMPLE_BUDGET_BYTES = 3_000_000
MAX_TEXT_CHARS = 400
MAX_COLUMNS = 8
PAGE_ROWS = 25

ROW_FILES = ("samples.jsonl", "rows.jsonl", "scores.jsonl", "filtered.jsonl", "verdicts.jsonl", "points.jsonl")
"""The per-record files a run folder may hold, each shown as a table of its own."""

SAMPLE_COLUMNS = ("method", "prompt", "completion", "reward")


def read_jsonl(path: Path) -> list[dict]:
    """The readable lines of a JSONL file (a line cut off by a killed run is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):  # cut off, or nested too deep to read
                continue
            if isinstance(value, dict):
                rows.append(value)
    return rows


def number(value) -> float | None:
    """`value` as a float when it is a finite number (not a bool, not an integer too large for a float), else
    None."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def cut(value) -> str:
    """A cell's text: strings as they are, anything else as JSON, cut to `MAX_TEXT_CHARS` and an ellipsis."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"


def is_sample(record: dict) -> bool:
    """A generated sample: a prompt and its completion (or a prefill attack's continuation)."""
    return "prompt" in record and ("completion" in record or "continuation" in record)


def sample_row(sample: dict) -> list:
    """(method, prompt, completion, reward) of a sample; the method is whichever of method/model/configuration/k
    it has."""
    method = next((sample[key] for key in ("method", "model", "configuration", "k") if key in sample), "")
    completion = sample.get("completion", sample.get("continuation", ""))
    return [cut(method), cut(sample.get("prompt", "")), cut(completion), number(sample.get("reward"))]


def bulky(value) -> bool:
    """A list of more than 16 items or a dict of more than 8 (token ids, log-probs): left out of a table."""
    return (isinstance(value, list) and len(value) > 16) or (isinstance(value, dict) and len(value) > 8)


def columns_of(records: list[dict]) -> list[str]:
    """The first `MAX_COLUMNS` keys of the records (in order of appearance) that are not bulky."""
    keys: dict[str, None] = {}
    for record in records[:200]:
        keys.update({key: None for key, value in record.items() if not bulky(value)})
    return list(keys)[:MAX_COLUMNS]


def generic_row(record: dict, columns: list[str]) -> list:
    """A record's cells under `columns`: numbers as numbers, the rest as text."""
    return [v if number(v := record.get(key)) is not None else "" if v is None else cut(v) for key in columns]


def embedded(value) -> str:
    """`value` as the page embeds it: JSON with every ``<`` escaped, so that nothing can close the script."""
    return json.dumps(value).replace("<", "\\u003c")


def take_evenly(records: list[dict], make_row, budget: int) -> list[list]:
    """Rows made from records taken evenly across `records` whose embedded JSON fits `budget` bytes: the row
    count is set from the size of an even sample of ≤ 200 records across the file, then rows are taken at even
    steps, and the last ones dropped if the estimate ran over."""
    if not records:
        return []
    probe = records[:: max(1, len(records) // 200)][:200]
    average = max(1, sum(len(embedded(make_row(r))) for r in probe) // len(probe))
    keep = min(len(records), max(1, budget // (average + 2)))
    step = len(records) / keep
    rows = [make_row(records[int(i * step)]) for i in range(keep)]
    used = sum(len(embedded(row)) + 2 for row in rows)
    while used > budget and len(rows) > 1:
        used -= len(embedded(rows.pop())) + 2
    return rows


def sample_rows(samples: list[dict], budget: int = SAMPLE_BUDGET_BYTES) -> tuple[list[list], int]:
    """Rows (method, prompt, completion, reward) for the table, texts cut to `MAX_TEXT_CHARS`, taken evenly across
    `samples` until their JSON reaches `budget` bytes; with how many there were."""
    return take_evenly(samples, sample_row, budget), len(samples)


def table_of(records: list[dict], budget: int) -> tuple[list[str], list[list]]:
    """(columns, rows) of a file's records: the sample layout for samples, their own keys for anything else."""
    if records and all(is_sample(r) for r in records[:50]):
        return list(SAMPLE_COLUMNS), take_evenly(records, sample_row, budget)
    columns = columns_of(records)
    return columns, take_evenly(records, lambda r: generic_row(r, columns), budget)


def round_number(folder: Path) -> int:
    found = re.search(r"(\d+)$", folder.name)
    return int(found.group(1)) if found else 0


def online_samples(run_dir: Path) -> list[dict]:
    """Every round's samples of an online run (``rounds/round-NNN/samples.jsonl``), and its held-out samples
    (``eval_samples.jsonl``), each with its round as the method."""
    records = []
    for folder in sorted((run_dir / "rounds").glob("round-*"), key=round_number):
        for name, what in (("samples.jsonl", ""), ("eval_samples.jsonl", " held-out")):
            records += [{"method": f"round {round_number(folder)}{what}", **r} for r in read_jsonl(folder / name)]
    return records


def row_files(run_dir: Path) -> list[tuple[str, list[dict]]]:
    """(name, records) of each per-record file of the folder that has records; an online run's rounds as one."""
    found = [(name, records) for name in ROW_FILES if (records := read_jsonl(run_dir / name))]
    if (run_dir / "rounds").is_dir():
        rounds = online_samples(run_dir)
        if rounds:
            found.append(("rounds/round-*/samples.jsonl", rounds))
    return found


SCRIPT = """
(function(){
  function fmt(v){if(v===null||v===undefined)return '';if(typeof v!=='number')return String(v);
    if(Number.isInteger(v))return String(v);var a=Math.abs(v);
    return (a>=1e5||a<1e-3)?v.toPrecision(4):v.toFixed(3);}
  document.querySelectorAll('.rowtable').forEach(function(box){
    var data=JSON.parse(box.querySelector('script.rows').textContent), rows=data.rows, shown=rows, page=0;
    var body=box.querySelector('tbody'), info=box.querySelector('.page-info'), search=box.querySelector('input');
    function draw(){
      while(body.firstChild) body.removeChild(body.firstChild);
      var pages=Math.max(1, Math.ceil(shown.length/PAGE_ROWS)); page=Math.min(page, pages-1);
      shown.slice(page*PAGE_ROWS, page*PAGE_ROWS+PAGE_ROWS).forEach(function(r){
        var tr=document.createElement('tr');
        r.forEach(function(v){var td=document.createElement('td');td.textContent=fmt(v);
          if(typeof v==='number')td.className='num';tr.appendChild(td);});
        body.appendChild(tr);});
      info.textContent='page '+(page+1)+' of '+pages+' ('+shown.length+' rows)';
    }
    search.addEventListener('input', function(){var q=search.value.toLowerCase();
      shown=q?rows.filter(function(r){return r.map(fmt).join(' ').toLowerCase().indexOf(q)>=0;}):rows;
      page=0;draw();});
    box.querySelector('.prev').addEventListener('click', function(){if(page>0){page--;draw();}});
    box.querySelector('.next').addEventListener('click', function(){page++;draw();});
    draw();
  });
})();
""".replace("PAGE_ROWS", str(PAGE_ROWS))


def table_html(index: int, name: str, columns: list[str], rows: list[list], total: int) -> str:
    """One searchable, paged table; the first one's parts carry the ids the browser tests look for."""
    suffix = "" if index == 0 else f"-{index}"
    noun = "samples" if columns == list(SAMPLE_COLUMNS) else "rows"
    note = (f"showing {len(rows):,} of {total:,} {noun} (evenly spaced; all in {name})" if len(rows) < total
            else f"{total:,} {noun} (from {name})")
    data = embedded({"columns": columns, "rows": rows})
    widths = {"method": " class='method'", "reward": " class='num'"}
    head = "".join(f"<th{widths.get(c, '')}>{html.escape(c)}</th>" for c in columns)
    return (f"<div class='rowtable' id='table{suffix}'><h3>{html.escape(name)}</h3>"
            f"<p class='note' id='sample-note{suffix}'>{note}; texts longer than {MAX_TEXT_CHARS} characters are "
            f"cut</p><p><input id='search{suffix}' type='search' placeholder='search every column'> "
            f"<span class='pager'><button class='prev' id='prev{suffix}'>◀</button><span class='page-info' "
            f"id='page-info{suffix}'></span><button class='next' id='next{suffix}'>▶</button></span></p>"
            f"<table><thead><tr>{head}</tr></thead><tbody id='sample-body{suffix}'></tbody></table>"
            f"<script class='rows' type='application/json'>{data}</script></div>")


def rows_section(run_dir: Path, budget: int = SAMPLE_BUDGET_BYTES) -> str:
    """Every per-record file's table (the byte budget shared between them), or nothing when there is none."""
    files = row_files(run_dir)
    if not files:
        return ""
    parts = ["<h2>Records</h2>"]
    for index, (name, records) in enumerate(files):
        columns, rows = table_of(records, budget // len(files))
        parts.append(table_html(index, name, columns, rows, len(records)))
    return "".join(parts) + f"<script>{SCRIPT}</script>"
