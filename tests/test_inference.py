"""The lean scoring forward pass (negclip.inference) against transformers' own forward."""

import pytest
import torch
import torch.nn.functional as F

from negclip import inference
from negclip.encode import image_features, text_features, tokenize
from negclip.images import load_image
from negclip.models import load_clip
from negclip.packing import pack_token_ids, token_id_lists

CAPTIONS = [
    "A man riding a horse on a beach.",
    "A man riding a horse on a beach, but there is no dog.",
    "There is no dog in this image; a man riding a horse on a beach.",
    "A red bus.",
]


@pytest.fixture()
def clip():
    loaded = load_clip("tiny-random")
    loaded.model.eval()
    return loaded


def reference_text(clip, captions):
    batch = tokenize(clip.tokenizer, captions)
    with torch.no_grad():
        return text_features(clip.model, batch.input_ids, batch.attention_mask)


def test_image_features_match_transformers(clip, photo_paths):
    pixel_values = clip.preprocess([load_image(path) for path in photo_paths[:3]])
    with torch.no_grad():
        expected = image_features(clip.model, pixel_values)
    lean = inference.image_features(clip.model, pixel_values)
    assert lean.shape == expected.shape == (3, clip.model.config.projection_dim)
    torch.testing.assert_close(lean, expected, atol=1e-5, rtol=1e-4)


def test_packed_text_features_match_unpacked_transformers(clip):
    packed = pack_token_ids(token_id_lists(clip.tokenizer, CAPTIONS), max_row_tokens=24)
    assert packed.input_ids.shape[0] >= 2  # several rows, so each caption must read its own row
    lean = inference.packed_text_features(clip.model, packed)
    torch.testing.assert_close(lean, reference_text(clip, CAPTIONS), atol=1e-5, rtol=1e-4)


def test_features_match_without_onednn(clip, photo_paths, monkeypatch):
    monkeypatch.setattr(inference, "_onednn_usable", lambda weight: False)
    inference._PREPARED.clear()
    pixel_values = clip.preprocess([load_image(photo_paths[0])])
    with torch.no_grad():
        expected = image_features(clip.model, pixel_values)
    torch.testing.assert_close(inference.image_features(clip.model, pixel_values), expected, atol=1e-5, rtol=1e-4)
    packed = pack_token_ids(token_id_lists(clip.tokenizer, CAPTIONS))
    torch.testing.assert_close(inference.packed_text_features(clip.model, packed), reference_text(clip, CAPTIONS), atol=1e-5, rtol=1e-4)
    inference._PREPARED.clear()


def test_exact_gelu_model_matches(photo_paths):
    """A checkpoint with exact GELU in place of quick_gelu runs its own activation between fc1 and fc2."""
    from transformers import CLIPConfig

    from negclip.models import build_random_clip

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu"),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8, hidden_act="gelu",
        ),
        projection_dim=16,
    )
    model = build_random_clip(config)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = image_features(model, pixel_values)
    torch.testing.assert_close(inference.image_features(model, pixel_values), expected, atol=1e-5, rtol=1e-4)
    assert inference.prepared_layers(model.vision_model.encoder)[0].fc1.activation == "none"


def test_wrong_image_size_rejected(clip):
    with pytest.raises(ValueError, match="takes"):
        inference.image_features(clip.model, torch.zeros(1, 3, 40, 40))


def test_prepared_weights_follow_weight_changes(clip):
    packed = pack_token_ids(token_id_lists(clip.tokenizer, CAPTIONS))
    before = inference.packed_text_features(clip.model, packed)
    layer = clip.model.text_model.encoder.layers[0]
    with torch.no_grad():
        layer.mlp.fc1.weight.mul_(1.5)  # an in-place change, as load_state_dict makes
    after = inference.packed_text_features(clip.model, packed)
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, reference_text(clip, CAPTIONS), atol=1e-5, rtol=1e-4)

    # Fused AdamW changes weights without advancing their version counters; the step count covers it.
    optimizer = torch.optim.AdamW([layer.self_attn.q_proj.weight], lr=0.1, fused=True)
    layer.self_attn.q_proj.weight.grad = torch.ones_like(layer.self_attn.q_proj.weight)
    optimizer.step()
    stepped = inference.packed_text_features(clip.model, packed)
    torch.testing.assert_close(stepped, reference_text(clip, CAPTIONS), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(stepped, after, atol=1e-4)


def test_supports_only_plain_eval_cpu_models(clip):
    assert inference.supports(clip.model)
    clip.model.train()
    assert not inference.supports(clip.model)
    clip.model.eval()
    clip.model.half()
    assert not inference.supports(clip.model)


def test_unmerged_lora_is_not_supported():
    from peft import LoraConfig, get_peft_model

    loaded = load_clip("tiny-random")
    peft_model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.eval()
    assert inference.clip_model(peft_model) is loaded.model
    assert not inference.supports(peft_model)


def test_scores_equal_with_and_without_lean_path(clip, photo_paths):
    from negclip.scoring import score_captions

    lean = score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=None)
    with torch.no_grad():
        pixel_values = clip.preprocess([load_image(photo_paths[0])])
        image = F.normalize(image_features(clip.model, pixel_values), dim=-1)[0]
        expected = F.normalize(reference_text(clip, CAPTIONS), dim=-1) @ image
    assert lean.cosine == pytest.approx(expected.tolist(), abs=1e-5)
