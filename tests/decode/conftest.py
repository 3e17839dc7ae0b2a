import torch

from tests.conftest import random_llama


class ToyTokenizer:
    """Token ids written as numbers: prompt "3 1" is [3, 1]; token 0 pads and token 1 ends a sequence."""

    eos_token_id, pad_token_id, chat_template = 1, 0, None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def toy_model(vocab: int = 6, seed: int = 0, sharpness: float = 40.0):
    """A tiny random Llama whose next-token distributions are far from uniform (a scaled LM head)."""
    model = random_llama(vocab, seed=seed, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_key_value_heads=1, num_hidden_layers=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model


def next_token_probs(model, prefix: list[int], temperature: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        return (model(input_ids=torch.tensor([prefix])).logits[0, -1].double() / temperature).softmax(-1)
