"""`alignlab data select DATA --target FILE --method zip_fit -k K --out DIR`: keep the K records of a pool that
suit a target set best (ZIP-FIT, Obbad et al.: compression alignment to the target examples), the K best by Deita
score and diversity (Liu et al., ICLR 2024), or K at random.

The run folder holds ``selected.jsonl`` (the kept records, in pool order, in DATA's own type: ``selected.csv``,
``selected.json`` or ``selected.parquet`` for such a pool, JSONL for a gzipped file, a saved dataset or a hub id),
``rows.jsonl`` (one row per pool record: index, location, score, rank, selected, domain), ``result.json`` (method,
k, n, compressor, mean score of the selected records and of all, in-domain precision when records carry a
``domain``), ``select.png`` and ``report.html``. ZIP-FIT scores (alignment = 1 − mean NCD to the targets) are
computed for every method when --target is given, so random and Deita selections can be compared on them.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from alignlab.assets import EMBEDDED_MODEL_NAME
from alignlab.commands.options import add_folder_options, add_quiet_option, positive, settings_of
from alignlab.data.deita import deita_select, last_token_embeddings
from alignlab.data.loading import read_records, same_type_name
from alignlab.data.select import (
    COMPRESSORS,
    METHODS,
    check_compressor,
    check_k,
    instruction_and_response,
    random_selection,
    record_text,
    top_k,
    zip_fit_scores,
)
from alignlab.errors import ConfigError, DataError
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.report.findings import Findings, write_findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="the pool: records with text, messages, prompt/completion or prompt/chosen "
                        "(.jsonl, .json, .csv, .parquet, a saved dataset or a hub id)")
    parser.add_argument("--target", help="examples of the data wanted, in any of DATA's formats (needed by zip_fit)")
    parser.add_argument("--method", choices=METHODS, default="zip_fit")
    parser.add_argument("-k", type=int, required=True, help="how many records to keep")
    parser.add_argument("--compressor", default="gzip", help=f"ZIP-FIT's compressor: {', '.join(COMPRESSORS)} "
                        "(default gzip, as in the paper; the official package uses lz4)")
    parser.add_argument("--seed", type=int, default=0, help="random selection's seed")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="deita: the largest cosine similarity a kept record may have to one kept before")
    parser.add_argument("--scorer", choices=("vader",), default="vader",
                        help="deita: the quality scorer (vader: an offline stand-in for the paper's LLaMA scorers)")
    parser.add_argument("--domain", help="the in-domain value of the records' 'domain' field, for the selection's "
                        "precision (default: the domains the target records carry)")
    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME, help="deita: the model whose last-token hidden states "
                        "embed the records for the diversity filter (default: the embedded model)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code to run")
    add_folder_options(parser)
    add_quiet_option(parser)


def _texts(path: str) -> tuple[list[dict], list[str], list[str]]:
    """(records, their texts, their locations) of a data file; a record without text stops with its line."""
    records, texts, locations = [], [], []
    for location, record in read_records(path):
        texts.append(record_text(record, source=str(path), location=location))
        records.append(record)
        locations.append(location)
    return records, texts, locations


def _check(args: argparse.Namespace) -> None:
    """Every option, before anything is read or written."""
    positive(args, "k")
    if args.method == "zip_fit" or args.target:
        check_compressor(args.compressor)
    if args.method == "zip_fit" and not args.target:
        raise ConfigError("--method zip_fit needs --target FILE: examples of the data wanted")
    if args.method == "deita" and not 0 < args.threshold <= 1:
        raise ConfigError(f"--threshold must be in (0, 1], got {args.threshold}")


def _in_domain(args: argparse.Namespace, targets: list[dict]) -> set[str]:
    """The domain values counted as in-domain: --domain, else those the target records carry."""
    if args.domain:
        return {args.domain}
    return {str(record["domain"]) for record in targets if isinstance(record, dict) and "domain" in record}


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _domain_numbers(records: list[dict], kept: list[int], in_domain: set[str]) -> dict[str, Any]:
    """Counts of the kept records' domains, and the in-domain share of the kept records and of the pool."""
    if not any("domain" in record for record in records):
        return {}
    domains = [str(record.get("domain")) for record in records]
    numbers: dict[str, Any] = {"selected_domains": dict(Counter(domains[index] for index in kept))}
    if in_domain:
        numbers["in_domain"] = sorted(in_domain)
        numbers["precision"] = sum(domains[index] in in_domain for index in kept) / len(kept)
        numbers["pool_in_domain_share"] = sum(domain in in_domain for domain in domains) / len(domains)
    return numbers


def _select(args: argparse.Namespace, records: list[dict], scores: list[float] | None) -> tuple[list[int], list]:
    """(kept indices, best first where the method ranks, and each record's score under the method)."""
    if args.method == "zip_fit":
        return top_k(scores, args.k), scores
    if args.method == "deita":
        return deita_selection(args, records)
    return random_selection(len(records), args.k, args.seed), scores or [None] * len(records)


def deita_selection(args: argparse.Namespace, records: list[dict]) -> tuple[list[int], list[float]]:
    """Deita on the pool: complexity (instruction length) × quality (VADER of the response), the offline stand-ins
    for the paper's LLaMA scorers, and the diversity filter over `args.embedder`'s last-token embeddings of each
    record's text."""
    model, tokenizer = args.embedder
    pairs = args.deita_pairs
    embeddings = last_token_embeddings(model, tokenizer, [f"{i}\n{r}".strip() for i, r in pairs])
    kept, scores = deita_select([i for i, _ in pairs], [r for _, r in pairs], embeddings, args.k, args.threshold)
    return kept, [float(score) for score in scores]


def _findings(args: argparse.Namespace, pool: tuple[list[dict], list[str], list[str]], targets: tuple) -> Findings:
    records, texts, locations = pool
    alignment = (zip_fit_scores(texts, targets[1], args.compressor, progress=not args.quiet)
                 if targets[1] else None)
    kept, scores = _select(args, records, alignment)
    rank = {index: position + 1 for position, index in enumerate(kept)}
    rows = [{"index": index, "location": locations[index], "score": scores[index], "rank": rank.get(index),
             "selected": index in rank, **({"domain": record["domain"]} if "domain" in record else {})}
            for index, record in enumerate(records)]
    chosen, others = [scores[i] for i in sorted(kept)], [s for i, s in enumerate(scores) if i not in rank]
    domains = _domain_numbers(records, kept, _in_domain(args, targets[0]))
    selected = same_type_name(args.data, "selected")
    result = {"method": args.method, "k": len(kept), "n": len(records), "targets": len(targets[1]),
              "compressor": args.compressor if alignment is not None else None,
              "score": "Deita score" if args.method == "deita" else ("ZIP-FIT alignment" if alignment else None),
              "mean_score_selected": _mean(chosen), "mean_score_all": _mean(scores), "selected_file": selected,
              **domains}
    if len(kept) < args.k:
        result["note_fewer_kept"] = (f"{len(kept)} of the {args.k} asked for: every other record is more similar than "
                                     f"--threshold {args.threshold} to one kept before (Deita's diversity filter)")
    bars = {"selected": {"mean score": _mean(chosen)}, "not selected": {"mean score": _mean(others)}}
    if "precision" in domains:
        bars["selected"]["in-domain share"] = domains["precision"]
        bars["not selected"]["in-domain share"] = _rest_share(records, rank, set(domains["in_domain"]))
    if result["mean_score_selected"] is None and "precision" not in domains:
        bars = {}
    summary = (f"kept {len(kept)} of {len(records)} records ({args.method}); mean score "
               f"{_fmt(result['mean_score_selected'])} selected vs {_fmt(result['mean_score_all'])} all"
               + (f"; in-domain precision {domains['precision']:.2f}" if "precision" in domains else ""))
    return Findings(result=result, rows=rows, bars=bars, ylabel="mean", title=f"data select: {args.method}",
                    files={selected: [records[index] for index in sorted(kept)]}, summary=summary)


def _rest_share(records: list[dict], kept: dict[int, int], in_domain: set[str]) -> float | None:
    rest = [str(record.get("domain")) in in_domain for index, record in enumerate(records) if index not in kept]
    return sum(rest) / len(rest) if rest else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def deita_pairs(path: str, pool: tuple[list[dict], list[str], list[str]]) -> list[tuple[str, str]]:
    """Each record's (instruction, response) for Deita, read with its file and line for errors; a record whose text
    is empty is refused (it has nothing to embed). Multi-turn messages are scored as one turn: all but the last
    turn the instruction (the paper sums complexity × quality over turns)."""
    pairs = []
    for record, location in zip(pool[0], pool[2], strict=True):
        instruction, response = instruction_and_response(record, str(path), location)
        if not f"{instruction}{response}".strip():
            raise DataError("the record's text is empty: nothing to score or embed", source=str(path),
                            location=location)
        pairs.append((instruction, response))
    return pairs


def run(args: argparse.Namespace) -> None:
    _check(args)
    pool = _texts(args.data)
    check_k(args.k, len(pool[0]))
    targets = _texts(args.target)[:2] if args.target else ([], [])
    if args.target and not targets[1]:
        raise ConfigError(f"--target {args.target} holds no records")
    settings = settings_of(args)
    if args.method == "deita":  # read and loaded before the folder is made: bad records and a missing model are one
        args.deita_pairs = deita_pairs(args.data, pool)  # line each, no folder left behind
        embedder = load_model(args.model, "float32", args.trust_remote_code)
        embedder.requires_grad_(False)
        args.embedder = (embedder, load_tokenizer(args.model, args.trust_remote_code))
    write_findings(args.out, args.overwrite, settings, lambda: _findings(args, pool, targets), "select.png")
