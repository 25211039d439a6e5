"""Shared prompt machinery against CLIP itself (docs/methods/coop.md; text runs only up to the last EOT)."""
import pytest
import torch

from engine.clip_loading import load_clip_to_cpu
from trainers.prompting import (assemble_prompts, build_class_prompts, clip_logits, eot_indices, init_context,
                                PromptedTextEncoder, tokenize)

CLASSNAMES = ["face", "great_white_shark", "2000 AM General Hummer SUV"]


@pytest.fixture(scope="module")
def clip_model(tiny_clip_path):
    return load_clip_to_cpu(tiny_clip_path).float()


def test_loaded_clip_is_fp16_with_fp32_embeddings(tiny_clip_path):
    model = load_clip_to_cpu(tiny_clip_path)
    assert model.dtype == torch.float16
    assert model.token_embedding.weight.dtype == torch.float32
    assert model.visual.input_resolution == 32 and model.ln_final.weight.shape[0] == 128


def test_phrase_init_sets_length_and_prefix(clip_model):
    init = init_context(clip_model, 16, "a_photo of a")
    assert init.n_ctx == 4 and init.prompt_prefix == "a photo of a"
    expected = clip_model.token_embedding(tokenize("a photo of a"))[0, 1:5]
    torch.testing.assert_close(init.ctx, expected)


def test_maple_phrase_convention_keeps_whole_phrase(clip_model):
    init = init_context(clip_model, 2, "a photo of a", phrase_sets_length=False)
    assert init.n_ctx == 2 and init.prompt_prefix == "a photo of a" and init.ctx.shape == (2, 128)
    assert init_context(clip_model, 5, "a photo of a", phrase_sets_length=False).prompt_prefix == "X X X X X"


def test_random_init_draws_normal_in_model_dtype(clip_model):
    torch.manual_seed(0)
    init = init_context(clip_model, 4, "", n_cls=3)
    torch.manual_seed(0)
    expected = torch.empty(3, 4, 128).normal_(std=0.02)
    assert init.prompt_prefix == "X X X X"
    torch.testing.assert_close(init.ctx, expected, rtol=0, atol=0)


def test_class_prompts_match_tokenizer(clip_model):
    prompts = build_class_prompts(clip_model, CLASSNAMES, "X X X X", 4)
    assert prompts.texts[1] == "X X X X great white shark."
    tokens = tokenize(prompts.texts)
    assert torch.equal(prompts.tokenized, tokens)
    assert eot_indices(tokens).tolist() == [int((t == 49407).nonzero()) for t in tokens]
    assert prompts.name_lens[0] == 1 and prompts.token_prefix.shape == (3, 1, 128)
    assert prompts.token_suffix.shape == (3, 77 - 5, 128)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_assembly_positions_reproduce_the_token_sequence(clip_model, position):
    """Filling ctx with the placeholder embeddings must give the embedding of the text
    with the class name moved to the requested position."""
    prompts = build_class_prompts(clip_model, CLASSNAMES, "X X X X", 4)
    x = clip_model.token_embedding(tokenize("X"))[0, 1]
    ctx = x.expand(4, -1)
    out = assemble_prompts(ctx, prompts.token_prefix, prompts.token_suffix, prompts.name_lens, position)
    texts = {"end": ["X X X X {}."], "middle": ["X X {} X X."], "front": ["{} X X X X."]}[position][0]
    expected = clip_model.token_embedding(tokenize([texts.format(n.replace("_", " ")) for n in CLASSNAMES]))
    torch.testing.assert_close(out, expected)


def test_class_specific_context_is_per_class(clip_model):
    prompts = build_class_prompts(clip_model, CLASSNAMES, "X X", 2)
    ctx = torch.randn(3, 2, 128)
    out = assemble_prompts(ctx, prompts.token_prefix, prompts.token_suffix, prompts.name_lens, "end")
    torch.testing.assert_close(out[:, 1:3], ctx)


def test_prompted_encoder_equals_clip_encode_text(clip_model):
    tokens = tokenize(["a photo of a face.", "a photo of a great white shark, a type of fish."])
    with torch.no_grad():
        ours = PromptedTextEncoder(clip_model)(clip_model.token_embedding(tokens), tokens)
        reference = clip_model.encode_text(tokens)  # full 77-token run
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_logits_scale_first_and_normalised(clip_model):
    f, t = torch.randn(2, 64), torch.randn(3, 64)
    logits = clip_logits(f, t, clip_model.logit_scale)
    expected = 100.0 * torch.nn.functional.normalize(f, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).t()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore")  # tracing warnings are irrelevant here
def test_jit_archive_and_state_dict_load_the_same_weights(tiny_clip_path, tmp_path):
    """OpenAI releases TorchScript archives; both formats go through `build_model`."""
    model = load_clip_to_cpu(tiny_clip_path).float()
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), tokenize(["a photo."])), check_trace=False)
    jit_path = tmp_path / "tiny_jit.pt"
    traced.save(str(jit_path))
    reloaded = load_clip_to_cpu(str(jit_path)).float()
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_unknown_backbone_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a CLIP model name"):
        load_clip_to_cpu("ViT-Q/99")
