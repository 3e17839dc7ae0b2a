"""A run's examples: read from `data.train` (or given as records or tokenized examples), drawn anew every epoch
(`data.transform`), or completed with self-samples from the initial model (``negatives`` data)."""

from __future__ import annotations

from alignlab import objectives
from alignlab.config import RunConfig
from alignlab.data import (
    TokenizedPair,
    TokenizedRollout,
    TokenizedSFT,
    TruncationStats,
    format_of,
    load_examples,
    resolve_format,
    tokenize_records,
)
from alignlab.data.transforms import load_triplets, safety_recovery_draw
from alignlab.errors import ConfigError
from alignlab.objectives.unpaired import kto_balance_warning
from alignlab.train.self_samples import with_self_samples
from alignlab.train.state import Data, Start


def _epoch_draws(config: RunConfig, tokenizer):
    """`data.transform`'s examples for an epoch: ``draw(epoch) -> (examples, truncation stats)``, a function of
    (seed, epoch) only, so a resumed run redraws the same ones."""
    data = config.data
    triplets = load_triplets(data.source("train"))

    def draw(epoch: int):
        return safety_recovery_draw(triplets, tokenizer, config.train.seed * 100_003 + epoch, data.recovery_probability,
                                    data.max_recovery_prefix, data.max_length, data.max_prompt_length)

    return draw


TOKENIZED_FORMATS = {TokenizedSFT: "sft", TokenizedPair: "paired", TokenizedRollout: "rollouts"}
"""Formats of examples given to a run already tokenized (online rounds)."""


def _given_examples(examples: list, objective: objectives.Objective) -> str:
    """The format of tokenized `examples` given to a run, checked: one type, and one the objective reads."""
    kinds = {TOKENIZED_FORMATS.get(type(e)) for e in examples}
    if len(kinds) != 1 or None in kinds:
        raise ConfigError("examples given to a run must all be of one tokenized type: "
                          f"{', '.join(t.__name__ for t in TOKENIZED_FORMATS)}")
    data_format = kinds.pop()
    if data_format not in objective.data_formats:
        raise ConfigError(f"objective '{objective.name}' reads {' or '.join(objective.data_formats)} data, and the "
                          f"examples given are {data_format} data")
    return data_format


def _load_data(config: RunConfig, objective: objectives.Objective, tokenizer, say, records: list | None,
               tokenized: list | None = None):
    """(format, train examples, eval examples, data report, per-epoch draw or None); `records` (validated, in
    memory) or `tokenized` examples replace `data.train` when given."""
    lengths = (config.data.max_length, config.data.max_prompt_length)
    draw = None
    if tokenized is not None:
        data_format, examples = _given_examples(tokenized, objective), tokenized
        stats = TruncationStats(examples=len(examples))
        source = f"{len(examples)} examples in memory"
    elif records is not None:
        data_format = resolve_format(format_of(records), "the list of records given", objective.data_formats,
                                     f"objective '{objective.name}'")
        examples, stats = tokenize_records(records, data_format, tokenizer, *lengths)
        source = f"{len(records)} records in memory"
    elif config.data.transform:
        data_format, draw = "sft", _epoch_draws(config, tokenizer)
        examples, stats = draw(0)
        source = f"{config.data.train} ({config.data.transform}, redrawn every epoch; epoch 1)"
    else:
        data_format = resolve_format(config.data.format, config.data.source("train"), objective.data_formats,
                                     f"objective '{objective.name}'")
        examples, stats = load_examples(config.data.source("train"), data_format, tokenizer, *lengths, say)
        source = config.data.source("train")
    say(f"train data {source} ({data_format}): {stats.summary()}")
    eval_examples, eval_stats = [], None
    if config.data.eval:
        eval_format = "sft" if draw else data_format
        eval_examples, eval_stats = load_examples(config.data.source("eval"), eval_format, tokenizer, *lengths, say)
        say(f"eval data {config.data.source('eval')}: {eval_stats.summary()}")
    report = {"train": stats.as_dict(), "eval": eval_stats.as_dict() if eval_stats else None}
    return data_format, examples, eval_examples, report, draw


def _self_samples(config: RunConfig, model, tokenizer, examples: list, seed: int) -> list:
    """`examples` with `data.self_samples` completions per prompt sampled from `model`."""
    data = config.data
    return with_self_samples(model, tokenizer, examples, data.self_samples, data.self_sample_max_new_tokens,
                             data.max_length, seed, config.train.progress)


def read_data(config: RunConfig, start: Start, records: list | None, tokenized: list | None) -> Data:
    """The run's examples (`_load_data`), with the objective's warnings about them (KTO's balance of labels)."""
    objective, say = start.objective, start.say
    data_format, examples, eval_examples, report, draw = _load_data(config, objective, start.tokenizer, say, records,
                                                                    tokenized)
    for term in objective.terms:
        warning = kto_balance_warning(term.params, [e.label for e in examples]) if term.name == "kto" else None
        if warning:
            say(warning)
    return Data(data_format, examples, eval_examples, report, draw)


def with_negatives(config: RunConfig, start: Start, data: Data, model) -> Data:
    """``negatives`` data completed with self-samples of `model` (the initial model); other data as it is."""
    if data.format != "negatives":
        return data
    tokenizer, seed = start.tokenizer, config.train.seed
    start.say(f"sampling {config.data.self_samples} completions per prompt from the initial model")
    examples = _self_samples(config, model, tokenizer, data.examples, seed)
    eval_examples = data.eval_examples
    if eval_examples:
        eval_examples = _self_samples(config, model, tokenizer, eval_examples, seed + 1)
    return Data(data.format, examples, eval_examples, data.report, data.draw)
