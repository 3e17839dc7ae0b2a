"""CONFLARE: conformal calibration of a retrieval distance cut-off (CONFormal LArge language model REtrieval).

Official code: Mayo-Radiology-Informatics-Lab/conflare (``conflare/conformal/calibration.py``,
``conflare/augmented_retrieval/rag.py``); method notes in specs/evaluation.md §5. Documents are cut into chunks
(1,500 characters, 200 overlap), embedded (L2-normalised) and compared to a question by the cosine distance

    d(q, c) = 1 − cos(e(q), e(c)).

Calibration: for each calibration question i, walk down the chunks ranked by distance (at most `max_chunk_eval` =
100) and stop at the first one that is its source chunk or that a relevance judge accepts; its distance is the score
s_i. Questions without such a chunk are dropped (and counted here: dropping them biases t downwards, since the
dropped questions are exactly those whose relevant chunk lies far away). The cut-off t is

    official:   t = np.percentile(s, 100·(1 − α))          (linear interpolation, no finite-sample correction)
    conformal:  t = s_(k), k = ⌈(n + 1)(1 − α)⌉            (the k-th smallest; +∞ when k > n)

and a question retrieves every chunk with d < t (strict; possibly none). The conformal cut-off carries the
split-conformal guarantee P(the answer chunk is retrieved) ≥ 1 − α when calibration and test questions are
exchangeable (and scores are tie-free, which continuous distances are); the official one falls short of it by up
to about 1/(n + 1).

`conformal_report` is the spec's toy: a knowledge base of generated movie reviews, templated questions ("Which genre
is ⟨title⟩ in?"), an exact-match relevance oracle (the chunk contains the title) and the embedded tiny-llama's
attention-masked mean-pooled last hidden state as embedder.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from alignlab.assets.corpus import GENRES, movie_title, review
from alignlab.errors import ConfigError
from alignlab.report.findings import Findings

QUANTILES = ("official", "conformal")
DEFAULT_ALPHAS = (0.05, 0.1, 0.2, 0.3)

Embedder = Callable[[list[str]], torch.Tensor]
"""texts → [N, H] L2-normalised embeddings."""
Judge = Callable[[str, str], bool]
"""(question, chunk) → whether the chunk (directly or potentially) answers the question."""


# --- the cut-off ----------------------------------------------------------------------------------------------


def check_alpha(alpha: float) -> None:
    """ConfigError unless 0 < α < 1."""
    if not (isinstance(alpha, int | float) and 0 < alpha < 1):
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")


def retrieval_threshold(scores: Sequence[float], alpha: float, quantile: str = "conformal") -> float:
    """The distance cut-off t from calibration scores s_1..s_n (specs/evaluation.md §5, step 4).

    "official" (conflare ``rag.py``): t = np.percentile(s, 100·(1 − α)), linear interpolation, no (n + 1)
    correction. "conformal": the k-th smallest score, k = ⌈(n + 1)(1 − α)⌉, or +∞ when k > n — with d < t this
    retrieves the answer chunk with probability ≥ 1 − α under exchangeability. ConfigError on α ∉ (0, 1), no
    scores, a non-finite score or an unknown `quantile`."""
    check_alpha(alpha)
    if quantile not in QUANTILES:
        raise ConfigError(f"quantile must be one of {', '.join(QUANTILES)}, got {quantile!r}")
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ConfigError("no calibration scores to take a quantile of")
    if not np.isfinite(values).all():
        raise ConfigError(f"calibration scores must be finite numbers, got {values[~np.isfinite(values)][:3]}")
    if quantile == "official":
        return float(np.percentile(values, 100 * (1 - alpha)))
    rank = math.ceil((values.size + 1) * (1 - alpha) - 1e-9)  # the tolerance absorbs float error in (n+1)(1-α)
    return float(np.sort(values)[rank - 1]) if rank <= values.size else math.inf


# --- chunks, embeddings, distances ----------------------------------------------------------------------------


def chunk_text(text: str, size: int = 1500, overlap: int = 200) -> list[str]:
    """Windows of `size` characters starting every `size` − `overlap` characters (the official 1,500 / 200),
    the last one ending at the text's end; a text of at most `size` characters is one chunk, an empty one none.
    Unlike the official ``chunk_text``, which wraps each chunk in "..." and stops before the text's tail (up to
    size − overlap characters of it never land in a chunk), every character is in a chunk."""
    if size < 1 or not 0 <= overlap < size:
        raise ConfigError(f"chunks need size ≥ 1 and 0 ≤ overlap < size, got size {size} and overlap {overlap}")
    step = size - overlap
    starts = range(0, max(len(text) - overlap, 1), step) if text else range(0)
    return [text[start:start + size] for start in starts]


def chunk_documents(texts: Sequence[str], size: int = 1500, overlap: int = 200) -> tuple[list[str], list[int]]:
    """Every document's chunks, in order, and the index of the document each comes from."""
    chunks, owners = [], []
    for index, text in enumerate(texts):
        pieces = chunk_text(text, size, overlap)
        chunks += pieces
        owners += [index] * len(pieces)
    return chunks, owners


def mean_pooled_embedder(model, tokenizer, batch_size: int = 16, max_length: int = 512,
                         progress: bool = False) -> Embedder:
    """A causal LM as embedder: e(x) = mean over the real (attention-masked) tokens of the last hidden state, L2
    normalised; texts are cut to their first `max_length` tokens. An offline stand-in for the official
    ``all-MiniLM-L6-v2``."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        ids = [tokenizer(text)["input_ids"][:max_length] or [pad] for text in texts]
        rows = []
        for start in tqdm(range(0, len(ids), batch_size), desc="embed", unit="batch", disable=not progress):
            batch = ids[start:start + batch_size]
            width = max(len(row) for row in batch)
            input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in batch], device=device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch], device=device)
            hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            weights = mask.unsqueeze(-1).float()
            rows.append(((hidden.float() * weights).sum(1) / weights.sum(1)).cpu())
        return torch.nn.functional.normalize(torch.cat(rows), dim=-1)
    return embed


def cosine_distances(questions: torch.Tensor, chunks: torch.Tensor) -> np.ndarray:
    """d = 1 − cos between every question [Q, H] and chunk [C, H] embedding (both L2-normalised): [Q, C]."""
    return 1.0 - questions.double().numpy() @ chunks.double().numpy().T


def contains_answer(answer: str) -> Callable[[str], bool]:
    """The exact-match relevance oracle of one question: the chunk contains `answer` (case-insensitive)."""
    needle = answer.lower()
    return lambda chunk: needle in chunk.lower()


# --- calibration scores and retrieval -------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """The first relevant chunk of a question's ranking: its rank (0 = nearest), index and distance (the score)."""

    rank: int
    chunk: int
    distance: float


def first_relevant(distances: np.ndarray, chunks: Sequence[str], relevant: Callable[[str], bool],
                   source: int | None = None, max_chunk_eval: int | None = 100) -> Hit | None:
    """Walk the chunks from nearest to farthest (at most `max_chunk_eval`; None: all) and return the first that is
    the source chunk (same text, case-insensitive, as conflare compares) or that `relevant` accepts; None if none
    is (conflare ``QuestionEvaluation.evaluate_questions``)."""
    order = np.argsort(distances, kind="stable")
    source_text = chunks[source].lower() if source is not None else None
    for rank, index in enumerate(order[:max_chunk_eval]):
        if chunks[index].lower() == source_text or relevant(chunks[index]):
            return Hit(rank, int(index), float(distances[index]))
    return None


def calibration_scores(distances: np.ndarray, chunks: Sequence[str], judges: Sequence[Callable[[str], bool]],
                       sources: Sequence[int | None] | None = None, max_chunk_eval: int | None = 100,
                       ) -> tuple[np.ndarray, list[int]]:
    """The score s_i (distance of the first relevant chunk, `first_relevant`) of every question with a hit, and the
    indices of the questions dropped for having none within `max_chunk_eval` (their exclusion biases t down)."""
    scores, dropped = [], []
    for i, row in enumerate(distances):
        hit = first_relevant(row, chunks, judges[i], sources[i] if sources is not None else None, max_chunk_eval)
        if hit is None:
            dropped.append(i)
        else:
            scores.append(hit.distance)
    return np.asarray(scores, dtype=np.float64), dropped


def retrieve(distances: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the chunks with d < t (strict, as conflare's ``conformal_filter``), nearest first; maybe none."""
    inside = np.flatnonzero(distances < threshold)
    return inside[np.argsort(distances[inside], kind="stable")]


def judge_questions(question_texts: Sequence[str], judge: Judge) -> list[Callable[[str], bool]]:
    """One chunk test per question from a (question, chunk) → bool judge."""
    return [lambda chunk, question=question: judge(question, chunk) for question in question_texts]


def evaluate_cutoffs(calibration: np.ndarray, test_scores: np.ndarray, test_distances: np.ndarray,
                     alphas: Sequence[float], quantiles: Sequence[str], label: str = "") -> list[dict]:
    """For each (α, quantile): t, the empirical coverage of the test questions (their first relevant chunk, hence
    some relevant chunk, has d < t; a question without any relevant chunk is never covered) and the mean and
    median number of chunks retrieved; `label` names the calibration set."""
    out = []
    for quantile in quantiles:
        for alpha in alphas:
            t = retrieval_threshold(calibration, alpha, quantile)
            counts = (test_distances < t).sum(axis=1) if len(test_distances) else np.zeros(0)
            out.append({"calibration": label, "alpha": alpha, "quantile": quantile, "target": 1 - alpha,
                        "threshold": t,
                        "coverage": float(np.mean(test_scores < t)) if len(test_scores) else None,
                        "mean_retrieved": float(counts.mean()) if len(counts) else None,
                        "median_retrieved": float(np.median(counts)) if len(counts) else None})
    return out


# --- the toy knowledge base -----------------------------------------------------------------------------------


def toy_knowledge_base(n_docs: int = 300, seed: int = 0) -> tuple[list[str], list[dict]]:
    """`n_docs` generated reviews (`alignlab.assets.corpus.review`), each opening with its fact sentence
    "⟨title⟩ is a ⟨genre⟩." so that the answer is stated in the chunk, and the recorded facts {title, genre}.
    Titles are distinct even without a leading "The" (no title is contained in another's chunk)."""
    if n_docs < 2:
        raise ConfigError(f"the toy knowledge base needs n_docs ≥ 2, got {n_docs}")
    rng, seen, docs, facts = random.Random(seed), set(), [], []
    while len(docs) < n_docs:
        title = movie_title(rng)
        core = title.removeprefix("The ")
        if core in seen:
            continue
        seen.add(core)
        genre = rng.choice(GENRES)
        article = "an" if genre[0] in "aeiou" else "a"
        docs.append(f"{title} is {article} {genre}. {review(rng, title, genre)}")
        facts.append({"title": title, "genre": genre})
    return docs, facts


def toy_questions(facts: Sequence[dict]) -> list[dict]:
    """Templated questions "Which genre is ⟨title⟩ in?", answered by the title's chunk (the oracle's match)."""
    return [{"question": f"Which genre is {fact['title']} in?", "answer": fact["title"], "genre": fact["genre"]}
            for fact in facts]


def split_questions(n: int, calibration_fraction: float, seed: int, n_calibration: int | None = None,
                    n_test: int | None = None) -> tuple[list[int], list[int]]:
    """A seeded shuffle of question indices cut into calibration (`n_calibration`, default round(fraction·n)) and
    held-out test questions (`n_test`, default the rest)."""
    if not 0 < calibration_fraction < 1:
        raise ConfigError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    n_cal = round(calibration_fraction * n) if n_calibration is None else n_calibration
    n_held = n - n_cal if n_test is None else n_test
    if n_cal < 1 or n_held < 1 or n_cal + n_held > n:
        raise ConfigError(f"{n} questions cannot give {n_cal} calibration and {n_held} test questions (each ≥ 1)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[:n_cal], order[n_cal:n_cal + n_held]


# --- the report -----------------------------------------------------------------------------------------------


def quantile_modes(quantile: str) -> tuple[str, ...]:
    """"official", "conformal" or "both" as the modes to run."""
    if quantile == "both":
        return QUANTILES
    if quantile not in QUANTILES:
        raise ConfigError(f"quantile must be official, conformal or both, got {quantile!r}")
    return (quantile,)


def _knowledge(documents: Sequence[str] | None, questions: Sequence[dict] | None, n_docs: int, seed: int,
               chunk_size: int, overlap: int) -> tuple[list[str], int, list[dict], list[int | None]]:
    """Chunks, the number of documents, the questions ({question, answer}) and each question's source chunk (the
    toy's own review when it is one chunk; None for given questions, which the judge alone decides)."""
    if (documents is None) != (questions is None):
        raise ConfigError("give both documents and questions, or neither (the toy knowledge base)")
    if documents is not None:
        chunks, _ = chunk_documents(documents, chunk_size, overlap)
        if not chunks:
            raise ConfigError("the documents have no text to chunk")
        return chunks, len(documents), list(questions), [None] * len(questions)
    docs, facts = toy_knowledge_base(n_docs, seed)
    chunks, owners = chunk_documents(docs, chunk_size, overlap)
    first = {owner: i for i, owner in reversed(list(enumerate(owners)))}
    sources = [first[d] if owners.count(d) == 1 else None for d in range(len(docs))]
    return chunks, len(docs), toy_questions(facts), sources


def _question_rows(questions: Sequence[dict], split: str, hits: Sequence[Hit | None],
                   max_chunk_eval: int) -> list[dict]:
    return [{"question": q["question"], "answer": q["answer"], "split": split,
             "first_relevant_rank": None if hit is None else hit.rank,
             "first_relevant_chunk": None if hit is None else hit.chunk,
             "score": None if hit is None else hit.distance,
             "dropped": split == "calibration" and (hit is None or hit.rank >= max_chunk_eval)}
            for q, hit in zip(questions, hits, strict=True)]


def _pick(values: Sequence, indices: Sequence[int]) -> list:
    return [values[i] for i in indices]


def _hits(distances: np.ndarray, chunks: Sequence[str], tests: Sequence[Callable[[str], bool]],
          sources: Sequence[int | None]) -> list[Hit | None]:
    """Each question's first relevant chunk over the full ranking (`first_relevant` with no walk limit)."""
    return [first_relevant(row, chunks, test, source, None)
            for row, test, source in zip(distances, tests, sources, strict=True)]


def calibrations(hits: Sequence[Hit | None], max_chunk_eval: int) -> dict[str, np.ndarray]:
    """The calibration scores two ways: "full ranking" (every question with a relevant chunk anywhere) and, when
    that drops some, "first N" — conflare's walk of at most N = `max_chunk_eval` chunks, no-hit questions dropped."""
    full = np.asarray([hit.distance for hit in hits if hit is not None], dtype=np.float64)
    walked = np.asarray([hit.distance for hit in hits if hit is not None and hit.rank < max_chunk_eval])
    if full.size == 0:
        raise ConfigError("no calibration question has a relevant chunk: nothing to calibrate on")
    out = {"full ranking": full}
    if walked.size and walked.size < full.size:  # the walk dropped questions the full ranking keeps
        out[f"first {max_chunk_eval}"] = walked
    return out


def _calibration_result(hits: Sequence[Hit | None], max_chunk_eval: int) -> dict:
    dropped = sum(hit is None or hit.rank >= max_chunk_eval for hit in hits)
    scores = np.asarray([hit.distance for hit in hits if hit is not None])
    return {"calibration_questions": len(hits), "max_chunk_eval": max_chunk_eval, "dropped": dropped,
            "dropped_note": f"{dropped} calibration question(s) had no relevant chunk among their {max_chunk_eval} "
            "nearest; conflare drops them, which biases t downwards (those are the far-away answers), so the "
            f"\"first {max_chunk_eval}\" cut-offs may cover less than 1 − α; the \"full ranking\" ones keep them",
            "without_relevant_chunk": sum(hit is None for hit in hits),
            "score_min": float(scores.min()), "score_median": float(np.median(scores)),
            "score_max": float(scores.max())}


def conformal_report(model, tokenizer, alphas: Sequence[float] = DEFAULT_ALPHAS, n_docs: int = 300,
                     n_calibration: int | None = None, n_test: int | None = None, quantile: str = "both",
                     seed: int = 0, progress: bool = False, documents: Sequence[str] | None = None,
                     questions: Sequence[dict] | None = None, chunk_size: int = 1500, overlap: int = 200,
                     max_chunk_eval: int = 100, calibration_fraction: float = 1 / 3,
                     embedder: Embedder | None = None, judge: Judge | None = None) -> Findings:
    """The CONFLARE toy (specs/evaluation.md §5), or the same on `documents` and `questions` ({question, answer}).

    Chunks (`chunk_size`/`overlap`) and questions are embedded (`embedder`, default `mean_pooled_embedder` of
    `model`); a chunk answers a question when it is the question's source chunk (toy) or the `judge` accepts it
    (default: the chunk contains the question's answer string; a given judge is asked down the full ranking, so
    make it cheap). The questions are shuffled (`seed`) and split into calibration (`n_calibration`, default a
    `calibration_fraction`: 100 of the toy's 300, the official N) and held-out test questions (`n_test`, default
    the rest). Scores are first-relevant-chunk distances; the cut-offs come from two calibration sets
    (`calibrations`): the full ranking, and conflare's walk of `max_chunk_eval` chunks with no-hit questions
    dropped (only when that drops some). A test question is covered when its first relevant chunk over all chunks
    has d < t. Result: per (calibration, α, mode) t, coverage, retrieved counts (``cutoffs``). Rows: one per
    question (split, rank and distance of its first relevant chunk, dropped). Chart: coverage against α."""
    for alpha in alphas:
        check_alpha(alpha)
    modes = quantile_modes(quantile)
    if not alphas or max_chunk_eval < 1:
        raise ConfigError(f"need at least one alpha and max_chunk_eval ≥ 1, got {list(alphas)}, {max_chunk_eval}")
    chunks, n_documents, items, sources = _knowledge(documents, questions, n_docs, seed, chunk_size, overlap)
    cal, held = split_questions(len(items), calibration_fraction, seed, n_calibration, n_test)
    embed = embedder or mean_pooled_embedder(model, tokenizer, progress=progress)
    texts = [q["question"] for q in items]
    distances = cosine_distances(embed(texts), embed(chunks))
    tests = judge_questions(texts, judge) if judge else [contains_answer(q["answer"]) for q in items]
    cal_hits = _hits(distances[cal], chunks, _pick(tests, cal), _pick(sources, cal))
    test_hits = _hits(distances[held], chunks, _pick(tests, held), _pick(sources, held))
    test_scores = np.asarray([math.inf if hit is None else hit.distance for hit in test_hits])
    cutoffs = [cutoff for label, scores in calibrations(cal_hits, max_chunk_eval).items()
               for cutoff in evaluate_cutoffs(scores, test_scores, distances[held], sorted(alphas), modes, label)]
    result = {
        "knowledge_base": "toy (generated reviews)" if documents is None else "given", "documents": n_documents,
        "chunks": len(chunks), "chunk_size": chunk_size, "overlap": overlap, "questions": len(items),
        **_calibration_result(cal_hits, max_chunk_eval),
        "test_questions": len(held), "test_without_relevant_chunk": int(np.isinf(test_scores).sum()),
        "embedder": "given" if embedder else "mean-pooled last hidden state (cosine distance)",
        "judge": "given" if judge else "exact match: the chunk contains the answer", "seed": seed,
        "retrieval": "chunks with d < t (strict)", "cutoffs": cutoffs}
    rows = (_question_rows(_pick(items, cal), "calibration", cal_hits, max_chunk_eval)
            + _question_rows(_pick(items, held), "test", test_hits, max_chunk_eval))
    return Findings(result, rows, _coverage_series(cutoffs), "α", "coverage on held-out questions",
                    "CONFLARE: coverage of the answer chunk", summary=_summary(cutoffs))


def _coverage_series(cutoffs: Sequence[dict]) -> dict[str, tuple[list, list]]:
    """Coverage against α, one line per (calibration, mode), and the 1 − α target."""
    series: dict[str, tuple[list, list]] = {}
    for cutoff in cutoffs:
        name = cutoff["quantile"] if cutoff["calibration"] == "full ranking" else \
            f"{cutoff['quantile']}, {cutoff['calibration']} (no-hit dropped)"
        x, y = series.setdefault(name, ([], []))
        x.append(cutoff["alpha"])
        y.append(cutoff["coverage"])
    alphas = sorted({c["alpha"] for c in cutoffs})
    series["1 − α"] = (alphas, [1 - a for a in alphas])
    return series


def _summary(cutoffs: Sequence[dict]) -> str:
    return "; ".join(f"{c['quantile']} α={c['alpha']:g}: coverage {c['coverage']:.3f}, "
                     f"{c['mean_retrieved']:.1f} chunks" for c in cutoffs if c["calibration"] == "full ranking")
