"""Per-token KL between two models along a response: how deep an alignment goes.

Qi et al., 2025, "Safety Alignment Should Be Made More Than Just a Few Tokens Deep": on (instruction,
response) pairs, teacher-forced through both models, the KL at response position k is

    KL_k = KL(π_A(·|x, y_<k) ‖ π_B(·|x, y_<k)) = Σ_v π_A(v|x, y_<k)·(log π_A(v|x, y_<k) − log π_B(v|x, y_<k)),

over the whole vocabulary, averaged over the examples that reach position k. With A the aligned model and B
its base, a shallow alignment puts almost all of its KL on the first few response tokens.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from alignlab.data.formats import SFTExample, load_fields
from alignlab.data.tokenize import as_messages, in_chat, tokenize_sft
from alignlab.errors import ConfigError
from alignlab.models.loading import check_same_vocabulary as same_tokens
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import DEFAULT_OPTIONS, ScoringOptions, completion_distribution_values, evaluation_mode
from alignlab.report.html import write_report_safely
from alignlab.report.plots import line_chart
from alignlab.run_folder import RunFolder


def kl_rows(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """KL(p_a ‖ p_b) per row of full log-distributions `[m, V]`; terms where p_a = 0 count 0, and float rounding
    below 0 is cut to 0 (KL ≥ 0)."""
    p_a = logp_a.exp()
    return torch.where(p_a > 0, p_a * (logp_a - logp_b), torch.zeros_like(p_a)).sum(-1).clamp(min=0)


def position_means(values: torch.Tensor, mask: torch.Tensor, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts per response position (the first `positions`) of per-token `values` `[B, T]` under `mask`,
    in float64, to be added up over batches."""
    width = min(positions, values.shape[1])
    sums = torch.zeros(positions, dtype=torch.float64)
    counts = torch.zeros(positions, dtype=torch.float64)
    # each row's response tokens, left-aligned: position k is the row's k-th masked value
    for row_values, row_mask in zip(values, mask.bool(), strict=True):
        kept = row_values[row_mask][:width].double().cpu()
        sums[: len(kept)] += kept
        counts[: len(kept)] += 1
    return sums, counts


def check_same_vocabulary(tokenizer_a, tokenizer_b, model_a, model_b, name_a: str, name_b: str) -> None:
    """Token KL compares distributions over one vocabulary: the tokenizers must map text to the same ids and the
    models' heads must have as many outputs."""
    same_tokens(tokenizer_a, tokenizer_b, name_a, name_b, "per-token KL")
    size_a, size_b = (m.get_output_embeddings().weight.shape[0] for m in (model_a, model_b))
    if size_a != size_b:
        raise ConfigError(f"{name_a} has {size_a} output logits and {name_b} {size_b}: per-token KL needs one "
                          "vocabulary")


@torch.no_grad()
def token_kl_by_position(model_a, model_b, examples, pad_id: int, positions: int, batch_size: int = 8,
                         options: ScoringOptions = DEFAULT_OPTIONS, progress: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean KL(π_A ‖ π_B) at each of the first `positions` response positions over `examples` (tokenized
    prompt/completion), and how many examples reach each position (mean 0 where none does)."""
    device = next(model_a.parameters()).device
    sums = torch.zeros(positions, dtype=torch.float64)
    counts = torch.zeros(positions, dtype=torch.float64)
    with evaluation_mode(model_a, model_b):
        for start in tqdm(range(0, len(examples), batch_size), desc="token KL", unit="batch", disable=not progress):
            slots, masks = completion_distribution_values([model_a, model_b], examples[start: start + batch_size],
                                                          pad_id, device, kl_rows, options)
            batch_sums, batch_counts = position_means(slots[0], masks[0], positions)
            sums += batch_sums
            counts += batch_counts
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums)), counts


def diagnose_token_kl(data: str, model_path: str, base_path: str, out: str, prompt_field: str = "prompt",
                      response_field: str = "response", positions: int = 64, batch_size: int = 8,
                      max_length: int = 512, max_prompt_length: int = 256, chat: bool | None = None,
                      overwrite: bool = False, trust_remote_code: bool = False, progress: bool = True,
                      log=print) -> dict:
    """`alignlab diagnose token-kl`: KL(π_model ‖ π_base) per response position over (prompt, response) records
    of `data`; writes ``result.json`` (the per-position means and counts) and ``token_kl.png``. String prompts go
    through the chat template as a user turn when `chat` (default: when the tokenizer has one), as the
    `alignlab evaluate` commands ask them."""
    if positions < 1 or batch_size < 1:
        raise ConfigError("--positions and --batch-size must be at least 1")
    if max_prompt_length >= max_length:
        raise ConfigError("--max-prompt-length must be below --max-length")
    folder = RunFolder(out)
    folder.check_usable(resume=False, overwrite=overwrite)
    records = load_fields(data, (prompt_field, response_field))
    tokenizer, base_tokenizer = (load_tokenizer(p, trust_remote_code) for p in (model_path, base_path))
    model, base = (load_model(p, "float32", trust_remote_code) for p in (model_path, base_path))
    check_same_vocabulary(tokenizer, base_tokenizer, model, base, model_path, base_path)
    chat = in_chat(tokenizer, chat)
    examples = [SFTExample(as_messages(r.values[prompt_field], "user") if chat else r.values[prompt_field],
                           r.values[response_field], r.where) for r in records]
    tokenized, stats = tokenize_sft(examples, tokenizer, max_length, max_prompt_length)
    with folder.writing(overwrite, on_success=write_report_safely):
        means, counts = token_kl_by_position(model, base, tokenized, tokenizer.pad_token_id, positions, batch_size,
                                             progress=progress)
        reached = int((counts > 0).sum())
        first = means[: min(5, reached)]
        later = means[5:reached]
        result = {"data": str(data), "model": model_path, "base": base_path, "examples": len(tokenized),
                  "direction": "KL(model || base) at each response position, teacher-forced on the data's responses",
                  "chat_template": chat,
                  "kl_by_position": means[:reached].tolist(), "examples_by_position": counts[:reached].long().tolist(),
                  "mean_kl_first_5": first.mean().item() if len(first) else None,
                  "mean_kl_after_5": later.mean().item() if len(later) else None,
                  "truncation": stats.as_dict()}
        folder.write_json("result.json", result)
        line_chart(folder.file("token_kl.png"), {"KL(model ‖ base)": (list(range(reached)), means[:reached].tolist())},
                   "response token position", "KL (nats)", f"Per-token KL over {len(tokenized)} responses")
    log(f"token KL over {len(tokenized)} responses: first 5 positions {result['mean_kl_first_5'] or 0:.4f} nats, "
        f"later {result['mean_kl_after_5'] or 0:.4f}; wrote {folder.file('result.json')}, "
        f"{folder.file('token_kl.png')}")
    return result
