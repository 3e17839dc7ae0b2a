"""`alignlab evaluate conformal-retrieval`: CONFLARE — a conformally calibrated retrieval distance cut-off, with its
coverage of the answer chunk on held-out questions and the number of chunks it retrieves, per α and quantile mode."""

from __future__ import annotations

import argparse

from alignlab.commands.options import add_model_run_options, frozen_model, positive, settings_of
from alignlab.data.formats import load_fields, plain_text
from alignlab.errors import ConfigError
from alignlab.evaluate.conformal import (
    DEFAULT_ALPHAS,
    check_alpha,
    chunk_text,
    conformal_report,
    quantile_modes,
    split_questions,
)
from alignlab.report.findings import write_findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--documents", help="records with a text field, chunked into the knowledge base (default: "
                        "the generated toy knowledge base of movie reviews; needs --questions)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--questions", help="records with a question and its answer: a string stated in the chunk "
                        "that answers it (a chunk is relevant when it contains it, case-insensitive); needs "
                        "--documents")
    parser.add_argument("--question-field", default="question")
    parser.add_argument("--answer-field", default="answer")
    parser.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS), metavar="ALPHA",
                        help="miscoverage levels in (0, 1)")
    parser.add_argument("--quantile", choices=("official", "conformal", "both"), default="both",
                        help="official: np.percentile(s, 100(1 − α)); conformal: the ⌈(n+1)(1−α)⌉-th smallest "
                        "score (the guarantee); both (default)")
    parser.add_argument("--chunk-size", type=int, default=1500, help="characters (the official 1500)")
    parser.add_argument("--overlap", type=int, default=200, help="characters (the official 200)")
    parser.add_argument("--max-chunk-eval", type=int, default=100, help="chunks walked per calibration question "
                        "before it is dropped, as conflare does (the official 100); the full-ranking cut-offs are "
                        "reported beside")
    parser.add_argument("--calibration-fraction", type=float, default=1 / 3,
                        help="share of the questions used for calibration; the rest are held out (default 1/3: "
                        "100 of the toy's 300, the official N)")
    parser.add_argument("--n-docs", type=int, default=300, help="reviews in the toy knowledge base")
    add_model_run_options(parser)


def check_options(args: argparse.Namespace) -> None:
    """Every option checked before anything is loaded."""
    positive(args, "chunk_size", "max_chunk_eval", "n_docs")
    for alpha in args.alphas:
        check_alpha(alpha)
    quantile_modes(args.quantile)
    chunk_text("", args.chunk_size, args.overlap)  # raises on overlap ∉ [0, size)
    if not 0 < args.calibration_fraction < 1:
        raise ConfigError(f"--calibration-fraction must be in (0, 1), got {args.calibration_fraction}")
    if bool(args.documents) != bool(args.questions):
        raise ConfigError("give --documents and --questions together, or neither (the toy knowledge base)")


def read_inputs(args: argparse.Namespace) -> tuple[list[str] | None, list[dict] | None]:
    """The documents' texts and the questions ({question, answer}) of the given files, or (None, None)."""
    if not args.documents:
        return None, None
    documents = [plain_text(r.values[args.text_field]) for r in load_fields(args.documents, (args.text_field,))]
    records = load_fields(args.questions, (args.question_field, args.answer_field))
    questions = [{"question": plain_text(r.values[args.question_field]),
                  "answer": plain_text(r.values[args.answer_field])} for r in records]
    return documents, questions


def run(args: argparse.Namespace) -> None:
    check_options(args)
    documents, questions = read_inputs(args)
    if documents is None and args.n_docs < 2:
        raise ConfigError(f"--n-docs must be at least 2 (the toy's questions are split in two), got {args.n_docs}")
    # the split, as the report will make it: too few calibration or test questions are refused here, not later
    split_questions(args.n_docs if questions is None else len(questions), args.calibration_fraction, args.seed)
    model, tokenizer = frozen_model(args)
    write_findings(args.out, args.overwrite, settings_of(args), lambda: conformal_report(
        model, tokenizer, args.alphas, args.n_docs, quantile=args.quantile, seed=args.seed, progress=not args.quiet,
        documents=documents, questions=questions, chunk_size=args.chunk_size, overlap=args.overlap,
        max_chunk_eval=args.max_chunk_eval, calibration_fraction=args.calibration_fraction), "conformal.png")
