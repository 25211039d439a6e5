"""Deep-prompt encoders against CLIP itself and a hand-unrolled block loop."""
import pytest
import torch

from engine.clip_loading import load_clip_to_cpu
from trainers.deep_prompting import DeepPromptedVisionEncoder, tower_sizes
from trainers.prompting import PromptedTextEncoder, causal_mask, eot_indices, run_block, tokenize

TEXTS = ["X X of a face.", "X X of a great white shark, a type of fish."]
N = 2  # prompt tokens


@pytest.fixture(scope="module")
def clip_model(tiny_clip_path):
    return load_clip_to_cpu(tiny_clip_path).float()


@pytest.fixture(scope="module")
def tokens():
    return tokenize(TEXTS)


def test_tower_sizes_are_read_from_the_model(clip_model):
    sizes = tower_sizes(clip_model)
    assert (sizes.text_width, sizes.vision_width, sizes.text_layers, sizes.vision_layers) == (128, 128, 3, 3)


def test_text_without_prompts_is_clip_encode_text(clip_model, tokens):
    with torch.no_grad():
        ours = PromptedTextEncoder(clip_model)(clip_model.token_embedding(tokens), tokens)
        torch.testing.assert_close(ours, clip_model.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_text_without_deep_prompts_is_the_shallow_prompted_encoder(clip_model, tokens):
    prompts = clip_model.token_embedding(tokens)
    prompts[:, 1:1 + N] = torch.randn(N, 128)
    with torch.no_grad():
        deep = PromptedTextEncoder(clip_model)(prompts, tokens, deep_prompts=[])
        shallow = PromptedTextEncoder(clip_model)(prompts, tokens)
    assert torch.equal(deep, shallow)


def test_vision_without_prompts_is_clip_visual(clip_model):
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(DeepPromptedVisionEncoder(clip_model.visual)(images), clip_model.visual(images))


def record_inputs(store):
    """A block_fn that keeps every block's input and output, then runs the block unchanged."""
    def block_fn(layer, block, x, mask):
        out = run_block(block, x, mask)
        store.append((layer, x.clone(), out.clone(), mask))
        return out
    return block_fn


def test_text_replacement_touches_exactly_positions_after_sot(clip_model, tokens):
    deep = [torch.randn(N, 128), torch.randn(N, 128)]  # blocks 1 and 2 of 3
    seen = []
    with torch.no_grad():
        PromptedTextEncoder(clip_model)(clip_model.token_embedding(tokens), tokens, deep, record_inputs(seen))
    assert [layer for layer, *_ in seen] == [0, 1, 2]
    for (layer, x_in, _, mask), (_, _, prev_out, _) in zip(seen[1:], seen[:-1]):
        assert torch.equal(x_in[1:1 + N], deep[layer - 1].expand(2, -1, -1).permute(1, 0, 2))
        assert torch.equal(x_in[:1], prev_out[:1]) and torch.equal(x_in[1 + N:], prev_out[1 + N:])
        assert torch.equal(mask, causal_mask(x_in.shape[0], x_in.dtype, x_in.device))


def test_text_matches_a_hand_unrolled_loop(clip_model, tokens):
    prompts = clip_model.token_embedding(tokens)
    deep = [torch.randn(N, 128)]  # depth 2: block 1 gets a fresh prompt, block 2 carries it
    with torch.no_grad():
        ours = PromptedTextEncoder(clip_model)(prompts, tokens, deep)
        x = (prompts + clip_model.positional_embedding).permute(1, 0, 2)  # full 77 tokens
        x = clip_model.transformer.resblocks[0](x)
        x[1:1 + N] = deep[0].unsqueeze(1)
        x = clip_model.transformer.resblocks[2](clip_model.transformer.resblocks[1](x))
        x = clip_model.ln_final(x.permute(1, 0, 2))
        expected = x[torch.arange(2), eot_indices(tokens)] @ clip_model.text_projection
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_per_sequence_deep_prompts(clip_model, tokens):
    encoder = PromptedTextEncoder(clip_model)
    prompts = clip_model.token_embedding(tokens)
    per_sequence = torch.randn(2, N, 128)
    with torch.no_grad():
        both = encoder(prompts, tokens, [per_sequence])
        first = encoder(prompts[:1], tokens[:1], [per_sequence[0]])
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)


def test_vision_prompts_are_appended_and_replaced_at_the_end(clip_model):
    images = torch.randn(2, 3, 32, 32)
    shallow, deep = torch.randn(N, 128), [torch.randn(N, 128), torch.randn(N, 128)]
    seen = []
    encoder = DeepPromptedVisionEncoder(clip_model.visual)
    with torch.no_grad():
        ours = encoder(images, shallow, deep, record_inputs(seen))
        assert seen[0][1].shape[0] == 1 + 4 + N  # class token, 2x2 patches, prompts
        for (layer, x_in, _, mask), (_, _, prev_out, _) in zip(seen[1:], seen[:-1]):
            assert mask is None
            assert torch.equal(x_in[-N:], deep[layer - 1].expand(2, -1, -1).permute(1, 0, 2))
            assert torch.equal(x_in[:-N], prev_out[:-N])

        # hand-unrolled: prompts get no positional embedding and enter before ln_pre
        visual = clip_model.visual
        x = visual.conv1(images).flatten(2).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(torch.cat([x, shallow.expand(2, -1, -1)], dim=1)).permute(1, 0, 2)
        for layer, block in enumerate(visual.transformer.resblocks):
            if layer:
                x[-N:] = deep[layer - 1].unsqueeze(1)
            x = block(x)
        expected = visual.ln_post(x[0]) @ visual.proj
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_block_fn_replaces_the_block_computation(clip_model):
    """A block_fn that skips every block leaves ln_post(class token after ln_pre)."""
    images = torch.randn(1, 3, 32, 32)
    encoder = DeepPromptedVisionEncoder(clip_model.visual)
    with torch.no_grad():
        ours = encoder(images, block_fn=lambda layer, block, x, mask: x)
        seen = []
        encoder(images, block_fn=record_inputs(seen))
        expected = clip_model.visual.ln_post(seen[0][1][0]) @ clip_model.visual.proj
    torch.testing.assert_close(ours, expected)


def test_too_many_deep_prompts_fail(clip_model, tokens):
    with pytest.raises(ValueError, match="3 deep prompts for 3 blocks"):
        PromptedTextEncoder(clip_model)(clip_model.token_embedding(tokens), tokens, [torch.zeros(N, 128)] * 3)


def test_fp32_prompts_are_cast_into_an_fp16_model(tiny_clip_path, tokens):
    clip_fp16 = load_clip_to_cpu(tiny_clip_path)
    images = torch.randn(1, 3, 32, 32).half()
    with torch.no_grad():
        text = PromptedTextEncoder(clip_fp16)(clip_fp16.token_embedding(tokens).half(), tokens,
                                                  [torch.randn(N, 128)])
        image = DeepPromptedVisionEncoder(clip_fp16.visual)(images, torch.randn(N, 128).half(), [torch.randn(N, 128)])
    assert text.dtype == image.dtype == torch.float16
