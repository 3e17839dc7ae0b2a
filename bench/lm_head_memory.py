"""Peak memory of scoring completions at a large vocabulary: full logits against the chunked LM head.

    python bench/lm_head_memory.py [--vocab 32000 128256] [--rows 8] [--length 512] [--json]

For each vocabulary size, one forward and backward pass of the summed completion log-probs of
`rows` sequences of `length` tokens (the last three quarters of each row are the completion) through a
randomly initialised Llama (hidden 512, 4 layers), each way in its own process:

- ``full_logits``: the usual way — the model's `[rows, length, vocab]` logits, a float32
  log-softmax over them, the targets gathered;
- ``chunked``: alignlab's engine (`completion_logps`): the LM head only on completion-predicting
  positions, 1,024 at a time, target logit minus logsumexp;
- ``chunked_recompute``: the same with `scoring.recompute_head`, each chunk's logits recomputed in the
  backward pass instead of kept.

Prints the peak resident memory above the model's own (after it is built) and the ratios to
``full_logits``, plus seconds per pass.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WAYS = ("full_logits", "chunked", "chunked_recompute")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(way: str, vocab: int, rows: int, length: int) -> dict:
    """One forward + backward in this process; peak RSS above the built model's, and seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.models.scoring import ScoringOptions, completion_logps

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=length,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(0, vocab, (rows, length))
    attention_mask = torch.ones_like(input_ids)
    completion_mask = torch.zeros_like(input_ids)
    completion_mask[:, length // 4:] = 1
    baseline = peak_rss_mb()
    started = time.perf_counter()
    if way == "full_logits":
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        total = (logps * completion_mask[:, 1:]).sum()
    else:
        logps = completion_logps(model, input_ids, attention_mask, completion_mask,
                                 options=ScoringOptions(recompute_head=way == "chunked_recompute"))
        total = logps.sum()
    total.backward()
    return {"peak_above_model_mb": peak_rss_mb() - baseline, "seconds": time.perf_counter() - started,
            "total_logp": total.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--one", nargs=2, metavar=("WAY", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.rows, args.length)))
        return
    summary: dict = {"settings": {"rows": args.rows, "length": args.length, "hidden": 512, "layers": 4}}
    for vocab in args.vocab:
        results = {}
        for way in WAYS:
            command = [sys.executable, __file__, "--rows", str(args.rows), "--length", str(args.length),
                       "--one", way, str(vocab)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[way] = json.loads(output.strip().splitlines()[-1])
        full = results["full_logits"]
        for way in WAYS:
            r = results[way]
            r["memory_vs_full_logits"] = r["peak_above_model_mb"] / full["peak_above_model_mb"]
            print(f"vocab {vocab:>6} {way:>17}: peak +{r['peak_above_model_mb']:7.0f} MB "
                  f"({r['memory_vs_full_logits']:.2f}x full logits), {r['seconds']:.2f} s, "
                  f"sum log p {r['total_logp']:.1f}", flush=True)
        summary[str(vocab)] = results
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
