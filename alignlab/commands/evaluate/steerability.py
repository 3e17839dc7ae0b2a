"""`alignlab evaluate steerability`: the steerability probe of Chang et al. ("A Course Correction in Steerability
Evaluation") — sources and random goals in a normalised goal space (default: length and sentiment), rewrites by
plain sampling and best-of-N, and steering error, miscalibration and orthogonality, binned and unbinned."""

from __future__ import annotations

import argparse
from pathlib import Path

from alignlab.commands.options import add_model_run_options, frozen_model, positive, settings_of
from alignlab.data.formats import load_fields, plain_text
from alignlab.errors import ConfigError
from alignlab.evaluate.steerability import ATTRIBUTES, METHODS, PROMPTINGS, goal_space, steerability_report
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.report.findings import write_findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attributes", nargs="+", default=["length", "sentiment"], metavar="NAME",
                        help=f"goal-space attributes, of {', '.join(ATTRIBUTES)} (default: length sentiment)")
    parser.add_argument("--sources", help="records with the source texts (default: reviews the model writes)")
    parser.add_argument("--source-field", default="text")
    parser.add_argument("--n-sources", type=int, default=16, help="sources used (the first N of --sources; the "
                        "spec's probe has 64)")
    parser.add_argument("--goals-per-source", type=int, default=2)
    parser.add_argument("--max-active", type=int, default=2, help="at most this many attributes move per goal")
    parser.add_argument("--bounds", nargs="+", default=[], metavar="NAME=MIN,MAX",
                        help="an attribute's normalisation range, e.g. length=20,400 for longer texts than reviews "
                        "(values outside it clip to 0 or 1)")
    parser.add_argument("--n", type=int, default=16, help="draws of best-of-N")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prompting", default="prefix", choices=PROMPTINGS, help="prefix: the model continues the "
                        "source's first words (a model that cannot follow instructions); direct: the paper's direct "
                        "prompt and the source as one chat turn")
    parser.add_argument("--prefix-words", type=int, default=5)
    parser.add_argument("--binned", action=argparse.BooleanOptionalAction, default=True,
                        help="headline (chart, log line) from the binned metrics, as the paper (default)")
    parser.add_argument("--compare", nargs="+", default=[], metavar="MODEL",
                        help="more models sampled the same way (a DPO model's folder, say), each a method")
    add_model_run_options(parser)


def _sources(args: argparse.Namespace) -> list[str] | None:
    if not args.sources:
        return None
    records = load_fields(args.sources, (args.source_field,))
    return [plain_text(r.values[args.source_field]) for r in records]


def model_label(path: str) -> str:
    """A compared model's method label: its folder's name, or a run's name for a run's ``final/`` (``runs/dpo/final``
    → ``dpo``)."""
    folder = Path(path)
    return (folder.parent.name if folder.name == "final" and folder.parent.name else folder.name) or path


def parse_bounds(items: list[str]) -> dict[str, tuple[float, float]]:
    """--bounds NAME=MIN,MAX … as {name: (min, max)}; one line for a malformed item."""
    bounds = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            low, high = (float(v) for v in values.split(","))
        except ValueError:
            raise ConfigError(f"--bounds {item}: expected NAME=MIN,MAX, e.g. length=20,400") from None
        bounds[name] = (low, high)
    return bounds


def run(args: argparse.Namespace) -> None:
    positive(args, "n_sources", "goals_per_source", "max_active", "n", "max_new_tokens", "prefix_words")
    bounds = parse_bounds(args.bounds)
    if unused := sorted(set(bounds) - set(args.attributes)):
        raise ConfigError(f"--bounds for {', '.join(unused)}, which is not among --attributes {args.attributes}")
    attributes = goal_space(args.attributes, bounds)
    if args.max_active > len(attributes):
        raise ConfigError(f"--max-active must be at most the {len(attributes)} attributes, got {args.max_active}")
    if len(set(args.methods)) != len(args.methods):
        raise ConfigError(f"--methods must be distinct, got {args.methods}")
    labels = [model_label(path) for path in args.compare]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--compare models need distinct folder names (their method labels), got {labels}")
    sources = _sources(args)
    model, tokenizer = frozen_model(args)
    compare = {}
    for label, path in zip(labels, args.compare, strict=True):
        other = load_model(path, "float32", args.trust_remote_code)
        other.requires_grad_(False)
        compare[label] = (other, load_tokenizer(path, args.trust_remote_code))
    write_findings(args.out, args.overwrite, settings_of(args), lambda: steerability_report(
        model, tokenizer, attributes, args.methods, args.n, args.n_sources, args.goals_per_source, args.max_active,
        args.max_new_tokens, args.seed, not args.quiet, sources, args.prompting, args.prefix_words, args.binned,
        compare), "steerability.png")
