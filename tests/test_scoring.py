"""Scoring one photo against captions: caption-feature cache, its invalidation, and the reference preprocessing."""

import gc

import pytest
import torch

from negclip.encode import encode_images, encode_texts
from negclip.models import load_clip
from negclip.scoring import TextFeatureCache, score_captions

CAPTIONS = ["a dog on a sofa", "a dog on a sofa, but there is no cat", "a red bus on a street"]


@pytest.fixture()
def clip():
    return load_clip("tiny-random")


def test_scores_match_plain_encoding(clip, photo_paths):
    scores = score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=None)
    expected = encode_texts(clip, CAPTIONS) @ encode_images(clip, [photo_paths[0]])[0]
    assert scores.cosine == pytest.approx(expected.tolist(), abs=1e-5)
    assert scores.best == int(expected.argmax())
    assert sum(scores.probability) == pytest.approx(1.0)


def test_text_cache_reuses_captions(clip, photo_paths):
    cache = TextFeatureCache()
    first = score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=cache)
    assert (cache.hits, cache.misses) == (0, 3)

    second = score_captions(clip, photo_paths[1], [CAPTIONS[2], CAPTIONS[0], "a cat"], cache=None, text_cache=cache)
    assert (cache.hits, cache.misses) == (2, 4)
    uncached = score_captions(clip, photo_paths[1], [CAPTIONS[2], CAPTIONS[0], "a cat"], cache=None, text_cache=None)
    assert second.cosine == pytest.approx(uncached.cosine, abs=1e-6)
    assert first.cosine != second.cosine


def test_text_cache_sees_optimizer_step(clip, photo_paths):
    cache = TextFeatureCache()
    before = score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=cache)
    # Fused AdamW leaves the parameters' version counters unchanged (PyTorch 2.13), unlike plain in-place updates.
    parameters = [clip.model.text_projection.weight]
    optimizer = torch.optim.AdamW(parameters, lr=0.1, fused=True)
    parameters[0].grad = torch.randn(parameters[0].shape, generator=torch.Generator().manual_seed(0))
    optimizer.step()

    after = score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=cache)
    assert cache.misses == 6
    assert after.cosine != pytest.approx(before.cosine, abs=1e-4)


def test_text_cache_sees_loaded_weights(clip, photo_paths):
    cache = TextFeatureCache()
    before = score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=cache)
    generator = torch.Generator().manual_seed(0)
    state = {
        name: tensor + torch.randn(tensor.shape, generator=generator)
        for name, tensor in clip.model.text_projection.state_dict().items()
    }
    clip.model.text_projection.load_state_dict(state)

    after = score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=cache)
    assert cache.misses == 6
    assert after.cosine != pytest.approx(before.cosine, abs=1e-4)


def test_text_cache_drops_freed_model(photo_paths):
    cache = TextFeatureCache()
    clip = load_clip("tiny-random")
    score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=cache)
    assert len(cache._models) == 1
    del clip
    gc.collect()
    assert len(cache._models) == 0


def test_text_cache_evicts_oldest(clip, photo_paths):
    cache = TextFeatureCache(max_entries=2)
    score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=cache)
    score_captions(clip, photo_paths[0], CAPTIONS[2:], cache=None, text_cache=cache)
    assert (cache.hits, cache.misses) == (1, 3)
    score_captions(clip, photo_paths[0], CAPTIONS[:1], cache=None, text_cache=cache)
    assert (cache.hits, cache.misses) == (1, 4)  # the first caption had been evicted


def test_preprocessing_matches_clip_image_processor(photo_paths):
    from PIL import Image

    from negclip.images import ImagePreprocessor

    try:
        from transformers import CLIPImageProcessorPil as reference_class  # transformers 5 without torchvision
    except ImportError:
        from transformers import CLIPImageProcessor as reference_class

    reference = reference_class()  # openai/clip-vit-base-patch32's settings are its defaults
    preprocess = ImagePreprocessor(image_size=224)
    sizes = set()
    for path in photo_paths[:8]:
        image = Image.open(path).convert("RGB")
        sizes.add(image.size)
        expected = reference(images=image, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(preprocess([image]), expected, atol=1e-6, rtol=0, msg=lambda m: f"{path.name}: {m}")
    assert (640, 480) in sizes  # rounding 298.67 instead of truncating it gave other pixel values here


def test_scoring_keeps_training_mode(clip, photo_paths):
    clip.model.train()
    scores = score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=None)
    assert clip.model.training
    assert clip.model.text_model.encoder.layers[0].training
    clip.model.eval()
    assert score_captions(clip, photo_paths[0], CAPTIONS, cache=None, text_cache=None).cosine == pytest.approx(scores.cosine, abs=1e-6)
    assert not clip.model.training


def test_image_cache_sees_image_weight_change(photo_paths):
    from negclip.encode import ImageFeatureCache

    base = load_clip("tiny-random")
    tuned = load_clip("tiny-random")
    assert base.image_cache_key == tuned.image_cache_key  # same image side: features are shared
    cache = ImageFeatureCache()
    before = score_captions(base, photo_paths[0], CAPTIONS, cache=cache, text_cache=None)
    with torch.no_grad():
        base.model.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(3.0)
    assert base.image_cache_key != tuned.image_cache_key
    after = score_captions(base, photo_paths[0], CAPTIONS, cache=cache, text_cache=None)
    fresh = score_captions(base, photo_paths[0], CAPTIONS, cache=None, text_cache=None)
    assert after.cosine == pytest.approx(fresh.cosine, abs=1e-6)
    assert after.cosine != pytest.approx(before.cosine, abs=1e-4)


def test_image_cache_sees_rewritten_folder(photo_paths, tmp_path):
    from negclip.encode import ImageFeatureCache

    folder = tmp_path / "model"
    first = load_clip("tiny-random")
    first.model.save_pretrained(folder)
    cache = ImageFeatureCache()
    before = score_captions(load_clip(str(folder)), photo_paths[0], CAPTIONS, cache=cache, text_cache=None)
    with torch.no_grad():
        first.model.visual_projection.weight.neg_()
    first.model.save_pretrained(folder)
    after = score_captions(load_clip(str(folder)), photo_paths[0], CAPTIONS, cache=cache, text_cache=None)
    assert after.cosine == pytest.approx([-value for value in before.cosine], abs=1e-5)


def test_text_cache_sees_disabled_lora(photo_paths):
    from peft import LoraConfig, get_peft_model

    from negclip.models import LoadedClip

    loaded = load_clip("tiny-random")
    base_scores = score_captions(loaded, photo_paths[0], CAPTIONS, cache=None, text_cache=None).cosine
    peft_model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora = LoadedClip(peft_model.eval(), loaded.tokenizer, loaded.preprocess, name="tiny-random")
    cache = TextFeatureCache()
    with_adapter = score_captions(lora, photo_paths[0], CAPTIONS, cache=None, text_cache=cache).cosine
    with peft_model.disable_adapter():
        disabled = score_captions(lora, photo_paths[0], CAPTIONS, cache=None, text_cache=cache).cosine
    assert disabled == pytest.approx(base_scores, abs=1e-5)
    assert with_adapter != pytest.approx(base_scores, abs=1e-4)
