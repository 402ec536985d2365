"""Shared-prefix packing: the same caption features and gradients as plain padded encoding, with fewer tokens."""

import pytest
import torch
import torch.nn.functional as F

from negclip.encode import EmptyCaptionError, text_features, tokenize
from negclip.models import load_clip
from negclip.negations import PHRASING_NAMES, negate_caption
from negclip.packing import can_pack, encode_captions_packed, pack_token_ids, token_id_lists

CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs play with a frisbee in a grassy park",
    "a plate of food with broccoli and rice on a wooden table.",
]


def _negated_captions() -> list[str]:
    captions = list(CAPTIONS)
    for index, caption in enumerate(CAPTIONS):
        for phrasing in PHRASING_NAMES[index::2]:
            captions.append(negate_caption(caption, "bus", phrasing))
    return captions


def _plain_features(model, tokenizer, captions):
    batch = tokenize(tokenizer, captions)
    return F.normalize(text_features(model, batch.input_ids, batch.attention_mask), dim=-1)


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-random")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_features_match_plain(clip, attention):
    clip.model.set_attn_implementation(attention)
    captions = _negated_captions()
    with torch.no_grad():
        packed = encode_captions_packed(clip.model, clip.tokenizer, captions, max_row_tokens=40)
        plain = _plain_features(clip.model, clip.tokenizer, captions)
    clip.model.set_attn_implementation("sdpa")
    assert packed.shape == plain.shape
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=0)


def test_packed_gradients_match_plain(clip):
    captions = _negated_captions()
    weights = torch.randn(len(captions), clip.model.config.projection_dim, generator=torch.Generator().manual_seed(0))
    gradients = []
    for encode in (encode_captions_packed, _plain_features):
        clip.model.zero_grad(set_to_none=True)
        (encode(clip.model, clip.tokenizer, captions) * weights).sum().backward()
        gradients.append({name: p.grad.clone() for name, p in clip.model.named_parameters() if p.grad is not None})
    packed, plain = gradients
    assert sorted(packed) == sorted(plain)
    assert "text_model.embeddings.position_embedding.weight" in packed
    for name in plain:
        torch.testing.assert_close(
            packed[name], plain[name], atol=1e-5, rtol=1e-4, msg=lambda message: f"{name}: {message}"
        )


def test_shared_prefix_computed_once(clip):
    caption = "A man riding a wave on top of a surfboard"
    negated = negate_caption(caption, "boat", "but_there_is_no")
    token_ids = token_id_lists(clip.tokenizer, [caption, negated])
    shared = len(token_ids[0]) - 1  # everything but the end-of-text token
    assert token_ids[1][:shared] == token_ids[0][:shared]

    packed = pack_token_ids(token_ids)
    assert packed.nodes == len(token_ids[0]) + len(token_ids[1]) - shared
    assert packed.input_ids.shape == (1, packed.nodes)
    # Both captions end at their own end-of-text node, at the depth of their last token.
    ends = packed.end_columns.tolist()
    assert packed.position_ids[0, ends].tolist() == [len(token_ids[0]) - 1, len(token_ids[1]) - 1]


def test_tree_mask_sees_only_ancestors():
    # Two captions that share their first two tokens: 10 20 30 and 10 20 40 50.
    packed = pack_token_ids([[10, 20, 30], [10, 20, 40, 50]])
    assert packed.input_ids.tolist() == [[10, 20, 30, 40, 50]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 3]]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 1, 0],  # 40 does not see 30, a sibling branch
            [1, 1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(packed.attention_mask[0], expected)
    assert packed.end_columns.tolist() == [2, 4]


def test_rows_split_at_token_budget():
    token_ids = [[1, 2, 3, 4, 9], [1, 2, 3, 5, 9], [1, 7, 7, 7, 9], [8, 8, 8, 8, 9]]
    packed = pack_token_ids(token_ids, max_row_tokens=8)
    # 5 + 2 nodes fit in 8; the third caption would add 4 and the fourth 5, so each starts a row.
    assert packed.end_rows.tolist() == [0, 0, 1, 2]
    assert packed.nodes == 7 + 5 + 5
    assert packed.input_ids.shape == (3, 7)
    # Padding nodes hold the end-of-text id and attend only to themselves.
    assert packed.input_ids[1, 5:].tolist() == [9, 9]
    assert packed.attention_mask[1, 6].nonzero().flatten().tolist() == [6]


def test_long_caption_truncated_like_tokenize(clip):
    captions = [" ".join(["dog"] * 100), "a cat"]
    with torch.no_grad():
        packed = encode_captions_packed(clip.model, clip.tokenizer, captions)
        plain = _plain_features(clip.model, clip.tokenizer, captions)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=0)


def test_empty_caption_rejected(clip):
    with pytest.raises(EmptyCaptionError, match="caption 2 of 2 is empty"):
        encode_captions_packed(clip.model, clip.tokenizer, ["a dog", "  "])


def test_can_pack_eager_and_sdpa(clip):
    assert can_pack(clip.model)
    clip.model.set_attn_implementation("eager")
    assert can_pack(clip.model)
    clip.model.set_attn_implementation("sdpa")
