"""`alignlab label --reward CONFIG in.jsonl out.jsonl`: score completions with a reward and write data every
offline objective reads.

Input records have a ``prompt`` and either ``completions`` (a list) / ``completion`` (one), which are scored as
given, or nothing else, in which case `samples` completions are sampled from the config's model. Output, one
record per input record (``output``): ``scored`` lists (``prompt``, ``completions``, ``scores``; read as
best/worst pairs by every paired objective), or ``paired`` records (``prompt``, ``chosen``, ``rejected``,
``chosen_reward``, ``rejected_reward``) of the best and worst completion. Completions whose reward failed and empty
completions are left out; records left with fewer than two completions, and (for pairs) records whose rewards tie
within `min_gap`, write nothing. All of these are counted and reported.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab import decode, rewards
from alignlab.commands.options import add_quiet_option, add_set_option
from alignlab.config import ModelConfig, build_dataclass, load_yaml
from alignlab.data.formats import RecordChecker, Text
from alignlab.data.loading import read_records
from alignlab.decode.base import check_ranges
from alignlab.errors import ConfigError, DataError
from alignlab.files import write_text_atomic
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.online.rounds import safe_rewards
from alignlab.registries import did_you_mean
from alignlab.run_folder import check_can_write


@dataclass
class LabelConfig:
    reward: str | dict[str, Any] = "sentiment"
    """The reward: a name (``alignlab decoders`` lists them) or ``{name: ..., param: value}``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model that samples completions for records that have only a prompt."""
    samples: int = 4
    """Completions sampled per prompt-only record."""
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0
    output: str = "scored"
    """``scored`` (lists of completions with their scores) or ``paired`` (best vs worst)."""
    min_gap: float = 0.0
    """``paired``: best − worst reward must exceed it."""
    progress: bool = True


OUTPUTS = ("scored", "paired")


def load_label_config(reward: str, overrides: list[str] | None = None) -> LabelConfig:
    """A YAML config file, or a reward name (every other setting at its default); checked in full."""
    path = Path(reward)
    if path.suffix in (".yaml", ".yml") or path.exists():
        data = load_yaml(path, overrides)
    else:
        data = load_yaml(None, [f"reward={reward}", *(overrides or [])])
    config = build_dataclass(LabelConfig, data)
    if config.output not in OUTPUTS:
        raise ConfigError(f"output: '{config.output}' is not one of {', '.join(OUTPUTS)}."
                          + did_you_mean(config.output, OUTPUTS))
    if config.samples < 1 or config.min_gap < 0:
        raise ConfigError("samples must be at least 1 and min_gap 0 or more")
    check_ranges("sample", {"max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size,
                            "temperature": config.temperature, "top_p": config.top_p})
    rewards.check_entry(config.reward, "reward")
    return config


def read_label_records(path: str) -> list[tuple[str, Text, list[str] | None]]:
    """(location, prompt, completions or None) of every record; a bad record stops with its location and field."""
    out = []
    for location, record in read_records(path):
        check = RecordChecker(str(path), location)
        record = check.record(record, "prompt, and completions or completion (or neither, to sample them)")
        prompt = check.prompt(record)
        if "completions" in record:
            given = record["completions"]
            if not isinstance(given, list) or not given:
                raise check.error("expected a non-empty list of completions", field="completions")
            completions = [check.text(c, f"completions[{i}]", allow_empty=True) for i, c in enumerate(given)]
        elif "completion" in record:
            completions = [check.text(record["completion"], "completion", allow_empty=True)]
        else:
            completions = None
        if completions is not None and not all(isinstance(c, str) for c in completions):
            raise check.error("completions must be strings", field="completions")
        out.append((location, prompt, completions))
    if not out:
        raise DataError("no records", source=str(path))
    return out


def label(config: LabelConfig, source: str, target: str, log=print) -> dict:
    """Score (and, for prompt-only records, first sample) the records of `source`; write `target`; return counts."""
    target_path = Path(target)
    if target_path.resolve() == Path(source).resolve():
        raise ConfigError(f"{target} is the input file; write the labels to another file")
    if target_path.is_dir():
        raise ConfigError(f"{target} is a folder; name the output file")
    if not target_path.parent.is_dir():
        raise ConfigError(f"{target}: its folder {target_path.parent} does not exist; make it first")
    check_can_write(target_path)
    records = read_label_records(source)
    reward = rewards.from_config(config.reward)
    to_sample = [i for i, (_, _, given) in enumerate(records) if given is None]
    completions = [given for _, _, given in records]
    if to_sample:
        tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
        dtype = "float32" if config.model.dtype == "auto" else config.model.dtype
        model = load_model(config.model.path, dtype, config.model.trust_remote_code)
        log(f"sampling {config.samples} completions for {len(to_sample)} prompt-only records from {config.model.path}")
        samples = decode.get("sample")(model, tokenizer, [records[i][1] for i in to_sample], n=config.samples,
                                       max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                       top_p=config.top_p, batch_size=config.batch_size, seed=config.seed,
                                       progress=config.progress)
        for j, i in enumerate(to_sample):
            completions[i] = samples.completions[j * config.samples: (j + 1) * config.samples]
    flat_prompts = [records[i][1] for i, texts in enumerate(completions) for _ in texts]
    flat = [text for texts in completions for text in texts]
    scores, error = safe_rewards(reward, flat_prompts, flat)
    counts = {"records": len(records), "sampled_records": len(to_sample), "completions": len(flat),
              "reward_failures": sum(math.isnan(s) for s in scores), "empty_completions": 0, "tied": 0,
              "single": 0, "written": 0}
    rows, start = [], 0
    for (_, prompt, _), texts in zip(records, completions, strict=True):
        pairs = [(t, s) for t, s in zip(texts, scores[start: start + len(texts)], strict=True) if not math.isnan(s)]
        start += len(texts)
        counts["empty_completions"] += sum(not t.strip() for t, _ in pairs)
        pairs = [(t, s) for t, s in pairs if t.strip()]  # the data loaders read non-empty completions only
        row = _labelled(prompt, pairs, config, counts)
        if row is not None:
            rows.append(row)
    if error:
        log(f"the reward failed on {counts['reward_failures']} completions, which are left out ({error})")
    if counts["tied"] or counts["single"] or counts["empty_completions"]:
        log(f"left out: {counts['empty_completions']} empty completions; records without a pair: {counts['tied']} "
            f"whose rewards tie (within min_gap = {config.min_gap}), {counts['single']} with fewer than two usable "
            "completions")
    counts["written"] = len(rows)
    write_text_atomic(target_path, "".join(json.dumps(row) + "\n" for row in rows))
    log(f"wrote {len(rows)} {config.output} records to {target} ({counts})")
    return counts


def _labelled(prompt: Text, scored: list[tuple[str, float]], config: LabelConfig, counts: dict) -> dict | None:
    if len(scored) < 2:
        counts["single"] += 1
        return None
    if config.output == "scored":  # records whose scores all tie are kept: the reader counts and skips them
        return {"prompt": prompt, "completions": [t for t, _ in scored], "scores": [round(s, 6) for _, s in scored]}
    best = max(range(len(scored)), key=lambda i: (scored[i][1], -i))
    worst = min(range(len(scored)), key=lambda i: (scored[i][1], i))
    if scored[best][1] - scored[worst][1] <= config.min_gap:
        counts["tied"] += 1
        return None
    return {"prompt": prompt, "chosen": scored[best][0], "rejected": scored[worst][0],
            "chosen_reward": round(scored[best][1], 6), "rejected_reward": round(scored[worst][1], 6)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reward", required=True, metavar="CONFIG",
                        help="YAML config (reward, model, samples, output: scored|paired, ...; see "
                        "examples/label.yaml) or just a reward name")
    parser.add_argument("input", help="records with a prompt, and completions/completion or nothing")
    parser.add_argument("output", help="the JSONL file to write")
    add_set_option(parser, "output=paired")
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> None:
    config = load_label_config(args.reward, args.set)
    if args.quiet:
        config.progress = False
    label(config, args.input, args.output)
