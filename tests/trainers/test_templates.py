"""Hand-crafted template prompts: texts, token ids and frozen embeddings for the text encoder."""
import torch

from engine.clip_loading import load_clip_to_cpu
from trainers.prompting import PromptedTextEncoder, tokenize
from trainers.templates import KGCOOP_TEMPLATES, template_for, template_prompts

CLASSNAMES = ["face", "great_white_shark"]


def test_template_for_falls_back_to_a_photo_of_a():
    assert template_for("DescribableTextures") == "{} texture."
    assert template_for("DescribableTextures", KGCOOP_TEMPLATES) == "a photo of a {}, a type of texture."
    assert template_for("MyOwnDataset") == "a photo of a {}."


def test_template_prompts_are_clip_inputs_of_the_filled_templates(tiny_clip_path):
    clip_model = load_clip_to_cpu(tiny_clip_path)  # fp16 weights, fp32 token table
    prompts = template_prompts(clip_model.token_embedding, ["a photo of a {}.", "art of the {}."], CLASSNAMES,
                               clip_model.dtype)
    texts = ["a photo of a face.", "a photo of a great white shark.",
             "art of the face.", "art of the great white shark."]
    assert prompts.texts == texts  # template-major, `_` shown as spaces
    assert torch.equal(prompts.tokenized, tokenize(texts))
    assert prompts.embedding.dtype == torch.float16 and not prompts.embedding.requires_grad
    assert torch.equal(prompts.embedding, clip_model.token_embedding(tokenize(texts)).half())
    one = template_prompts(clip_model.token_embedding, "a photo of a {}.", CLASSNAMES, torch.float32)
    assert one.texts == texts[:2] and one.embedding.dtype == torch.float32
    with torch.no_grad():
        features = PromptedTextEncoder(clip_model.float())(one.embedding, one.tokenized)
        torch.testing.assert_close(features, clip_model.encode_text(one.tokenized), rtol=1e-5, atol=1e-5)
