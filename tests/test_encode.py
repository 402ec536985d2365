"""Tokenization with per-batch padding, caption and photo encoding, the feature cache, model loading."""

import pytest
import torch

from negclip.encode import EmptyCaptionError, ImageFeatureCache, encode_images, encode_texts, text_features, tokenize
from negclip.models import ModelLoadError, load_clip


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-random")


def test_tokenize_real_clip_ids(clip):
    batch = tokenize(clip.tokenizer, ["a dog, but there is no cat."])
    # Ids of real CLIP's BPE vocabulary: "a" = 320, "dog" = 1929, "no" = 871, "cat" = 2368.
    assert batch.input_ids[0].tolist() == [49406, 320, 1929, 267, 767, 997, 533, 871, 2368, 269, 49407]
    assert batch.truncated == 0


def test_tokenize_pads_to_longest(clip):
    batch = tokenize(clip.tokenizer, ["a dog", "a dog on a red sofa in a room"])
    assert batch.input_ids.shape == (2, 11)
    assert batch.attention_mask[0].tolist() == [1, 1, 1, 1] + [0] * 7


def test_tokenize_truncates_and_counts(clip):
    long_caption = " ".join(["dog"] * 100)
    batch = tokenize(clip.tokenizer, [long_caption, "a cat"])
    assert batch.input_ids.shape[1] == 77
    assert batch.truncated == 1
    assert batch.input_ids[0, -1].item() == 49407  # the end-of-text token survives truncation


def test_tokenize_matches_tokenizer_padding(clip):
    captions = ["a dog", " ".join(["a red bus"] * 40), "There is no cat in this image; a dog on a sofa."]
    batch = tokenize(clip.tokenizer, captions)
    expected = clip.tokenizer(captions, padding="longest", truncation=True, max_length=77, return_tensors="pt")
    assert torch.equal(batch.input_ids, expected["input_ids"])
    assert torch.equal(batch.attention_mask, expected["attention_mask"])


@pytest.mark.parametrize("caption", ["", "   "])
def test_tokenize_rejects_empty(clip, caption):
    with pytest.raises(EmptyCaptionError, match="caption 2 of 2 is empty"):
        tokenize(clip.tokenizer, ["a dog", caption])


def test_batch_padding_matches_full_padding(clip):
    captions = ["a dog", "two people sitting at a table with plates of food and glasses"]
    per_batch = encode_texts(clip, captions)
    full = clip.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        padded = torch.nn.functional.normalize(text_features(clip.model, full["input_ids"], full["attention_mask"]), dim=-1)
    assert torch.allclose(per_batch, padded, atol=1e-5)


def test_encode_texts_independent_of_batching(clip):
    captions = [f"a photo of {n} dogs" for n in range(7)]
    assert torch.allclose(encode_texts(clip, captions, batch_size=3), encode_texts(clip, captions), atol=1e-5)


def test_encode_images_cache_reuses_features(clip, photo_paths):
    cache = ImageFeatureCache()
    first = encode_images(clip, photo_paths[:3], cache=cache)
    assert (cache.hits, cache.misses) == (0, 3)
    second = encode_images(clip, [photo_paths[2], photo_paths[0]], cache=cache)
    assert (cache.hits, cache.misses) == (2, 3)
    assert torch.equal(second[0], first[2])
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_cache_evicts_oldest():
    cache = ImageFeatureCache(max_entries=2)
    for name in ("a", "b", "c"):
        cache.put("model", name, torch.zeros(1))
    assert len(cache) == 2
    assert cache.get("model", "a") is None
    assert cache.get("model", "c") is not None


def test_load_clip_unknown_name_says_fix():
    with pytest.raises(ModelLoadError, match="tiny-random"):
        load_clip("not a model name")


def test_load_clip_hub_offline_says_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="--model <folder>"):
        load_clip("openai/clip-vit-base-patch32")


def test_load_clip_folder_round_trip(clip, tmp_path, photo_paths):
    clip.model.save_pretrained(tmp_path / "model")
    clip.tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_clip(str(tmp_path / "model"))
    assert torch.allclose(encode_texts(loaded, ["a dog"]), encode_texts(clip, ["a dog"]), atol=1e-6)
    assert torch.allclose(encode_images(loaded, photo_paths[:1]), encode_images(clip, photo_paths[:1]), atol=1e-6)


def test_load_clip_folder_missing_merges_named(clip, tmp_path):
    from negclip.models import TOKENIZER_DIR

    clip.model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "vocab.json").write_bytes((TOKENIZER_DIR / "vocab.json").read_bytes())  # no merges.txt
    with pytest.raises(ModelLoadError, match="merges.txt"):
        load_clip(str(tmp_path / "model"))
