import pytest

from alignlab import decode
from alignlab.decode import prompting
from alignlab.decode.prompting import REFUSAL, cut_at_stop, parse_route, urial_prompt


def test_route_selection_parsing_falls_back_to_potential_violation():
    assert parse_route('{"check_result": "ok", "route": "minimal risk", "tip": "be brief"}') == ("minimal risk",
                                                                                                 "be brief")
    assert parse_route('Sure! {"route": "direct violation"} done') == ("direct violation", "")
    for malformed in ("no json here", '{"route": "maybe"}', '{"route": "minimal risk",', "[1, 2]", ""):
        assert parse_route(malformed) == ("potential violation", "")


def test_guard_route_follows_each_route_with_a_stub_model(monkeypatch, tokenizer):
    """The model is a stub: route selections come from a script, answers echo what they were asked."""
    from tests.conftest import random_llama

    selections = {"weather": '{"route": "minimal risk", "tip": "mention a coat"}',
                  "bomb": '{"route": "direct violation", "tip": ""}', "lock": "I am not sure {route: potential"}
    calls = []

    def stub_complete(model, tokenizer, texts, max_new_tokens, cost):
        calls.append(texts)
        out = []
        for text in texts:
            content = text[-1]["content"] if isinstance(text, list) else text
            if "Reply with JSON only" in content:
                out.append(next(v for k, v in selections.items() if k in content.split("Query:")[-1]))
            else:
                out.append("ANSWER TO: " + content.split("Query:")[-1].strip()[:80])
        return out

    monkeypatch.setattr(prompting, "complete", stub_complete)
    model = random_llama(len(tokenizer))
    prompts = ["What is the weather like?", "How do I build a bomb?", "How do I pick a lock?"]
    samples = decode.get("guard_route")(model, tokenizer, prompts, progress=False)
    assert samples.extras["route"] == ["minimal risk", "direct violation", "potential violation"]
    assert samples.completions[1] == REFUSAL  # the fixed refusal, no generation
    assert "mention a coat" in samples.completions[0]  # the tip went with the query
    assert samples.completions[2].startswith("ANSWER TO: How do I pick a lock?")  # re-evaluated
    reevaluation = [t for t in calls[1] if "Advice from a first reading" in (t[-1]["content"] if isinstance(t, list)
                                                                             else t)]
    assert len(calls) == 2 and len(calls[1]) == 2 and len(reevaluation) == 1
    assert samples.kl_kind == "point"


def test_urial_prompt_and_stop_strings(tokenizer):
    prompt = urial_prompt([{"role": "system", "content": "x"}, {"role": "user", "content": "Name a film."}])
    assert prompt.count("# Query:\n```") == 4
    assert prompt.endswith("# Query:\n```\nName a film.\n```\n\n# Answer:\n```\n")
    ids = tokenizer("Watch The Quiet Kingdom.\n```\n\n# Query:\n```\nMore?", add_special_tokens=False)["input_ids"]
    kept, text = cut_at_stop(tokenizer, ids, ("# Query",))
    assert text == "Watch The Quiet Kingdom." and len(kept) < len(ids)
    assert "# Query" not in tokenizer.decode(kept)
    assert cut_at_stop(tokenizer, ids[:3], ("# Query",))[0] == ids[:3]  # no stop: everything is kept


def test_urial_decodes_on_the_embedded_model_within_its_context(tokenizer):
    from alignlab.assets import EMBEDDED_MODEL_DIR
    from alignlab.models.loading import load_model

    model = load_model(str(EMBEDDED_MODEL_DIR))
    samples = decode.get("urial")(model, tokenizer, ["Recommend a film."], max_new_tokens=8, progress=False)
    assert samples.prompts_truncated == 1  # ~900 prefix tokens do not fit 512 positions: cut and counted
    assert samples.logps.shape == (1,) and samples.logps[0] < 0 and samples.kl_kind == "point"
    assert len(samples.completion_ids[0]) <= 8
    with pytest.raises(Exception, match="Did you mean 'max_new_tokens'"):
        decode.get("urial", max_new_token=3)
