import pytest
import torch

from alignlab import ConfigError, decode
from alignlab.assets import EMBEDDED_MODEL_DIR
from alignlab.data import encode_prompt, encode_prompt_and_completion


def test_decoders_are_found_by_name_with_their_parameters_checked():
    assert decode.get("sample", temperature=0.7, top_k=5) is decode.sample
    assert "temperature" in decode.spec("sample").params and "prompts" not in decode.spec("sample").params
    with pytest.raises(ConfigError, match="Did you mean 'sample'"):
        decode.get("sampel")
    with pytest.raises(ConfigError, match=r"no hyperparameter 'temprature'\. Did you mean 'temperature'"):
        decode.get("sample", temprature=0.7)
    with pytest.raises(TypeError, match="must take tokenizer, prompts"):
        decode.register("broken")(lambda model, n: None)
    with pytest.raises(ValueError, match="registered twice"):
        decode.register("sample")(decode.sample)


def test_sampling_encodes_prompts_exactly_as_training_data_does():
    """Strings and chat messages become the same prompt ids in decoding as in the data pipeline."""
    from alignlab.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(EMBEDDED_MODEL_DIR))
    chat = [{"role": "user", "content": "Recommend a film."}]
    prompts = ["The film is", "", chat]
    samples = decode.get("sample")(model, tokenizer, prompts, n=2, max_new_tokens=4, seed=0, progress=False)
    assert len(samples) == 6 and samples.prompts[4] == chat
    expected = [encode_prompt_and_completion(tokenizer, p, " ok", "test")[0] for p in prompts]
    assert samples.prompt_ids == [ids for ids in expected for _ in range(2)]
    assert expected[1] == [tokenizer.eos_token_id]  # an empty prompt is the end-of-sequence token
    assert expected[2] == encode_prompt(tokenizer, chat)
    assert tokenizer.decode(expected[2]).rstrip().endswith("<|assistant|>")  # the generation prompt
    assert all(ids and len(ids) <= 4 for ids in samples.completion_ids)
    again = decode.get("sample")(model, tokenizer, prompts, n=2, max_new_tokens=4, seed=0, progress=False)
    assert again.completion_ids == samples.completion_ids
    assert samples.logps.shape == torch.Size([6]) and (samples.logps < 0).all()
