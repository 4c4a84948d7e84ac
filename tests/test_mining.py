"""Mining forget and retain spans from captions."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from halluc_bench.unlearning.mining import mine_spans, mine_unlearning_data, split_examples

# A hand-written finder: canonical object -> surface forms, longest first, whole words only.
SURFACE_FORMS = {
    "fork": ["forks", "fork"],
    "knife": ["knives", "knife"],
    "dining table": ["dining table", "table"],
    "teddy bear": ["teddy bears", "teddy bear"],
    "cup": ["cups", "cup"],
    "dog": ["dogs", "dog"],
    "bowl": ["bowls", "bowl"],
}
_PATTERN = re.compile(
    r"\b(" + "|".join(sorted((form for forms in SURFACE_FORMS.values() for form in forms), key=len, reverse=True)) + r")\b"
)
_CANONICAL = {form: name for name, forms in SURFACE_FORMS.items() for form in forms}


def simple_finder(caption: str) -> list[tuple[str, int, int]]:
    return [(_CANONICAL[match.group(1)], match.start(), match.end()) for match in _PATTERN.finditer(caption.lower())]


def chair_finder():
    from halluc_bench.unlearning.mining import chair_mention_finder

    try:
        return chair_mention_finder()
    except (ImportError, LookupError, FileNotFoundError) as error:  # CHAIR's lemmatizer data may be missing
        pytest.skip(f"CHAIR object extraction unavailable: {error}")


@pytest.fixture(params=["simple", "chair"])
def finder(request):
    return simple_finder if request.param == "simple" else chair_finder()


def _covered(caption: str, spans) -> list[str]:
    return [caption[start:end] for start, end in spans]


def test_mine_spans_hallucinated_knife(finder):
    caption = "a fork and a knife on a dining table"
    example = mine_spans(7, caption, {"fork", "dining table"}, finder)
    assert _covered(caption, example.forget_spans) == ["knife"]
    assert example.forget_spans == ((13, 18),)
    assert "fork" in _covered(caption, example.faithful_spans)
    assert any(text.endswith("table") for text in _covered(caption, example.faithful_spans))
    assert example.image_id == 7
    assert example.is_hallucinated


def test_mine_spans_plural(finder):
    caption = "two knives next to a fork"
    example = mine_spans(1, caption, {"fork"}, finder)
    assert _covered(caption, example.forget_spans) == ["knives"]
    assert _covered(caption, example.faithful_spans) == ["fork"]


def test_mine_spans_two_word_object(finder):
    caption = "a teddy bear on a table"
    example = mine_spans(1, caption, {"dining table"}, finder)
    assert _covered(caption, example.forget_spans) == ["teddy bear"]


def test_mine_spans_faithful_caption(finder):
    caption = "a fork and a knife"
    example = mine_spans(1, caption, {"fork", "knife"}, finder)
    assert example.forget_spans == ()
    assert _covered(caption, example.faithful_spans) == ["fork", "knife"]
    assert not example.is_hallucinated


def test_mine_spans_repeated_mention(finder):
    caption = "a dog and another dog"
    example = mine_spans(1, caption, set(), finder)
    assert _covered(caption, example.forget_spans) == ["dog", "dog"]


def test_mine_spans_rejects_span_outside_caption():
    with pytest.raises(ValueError, match="outside caption"):
        mine_spans(1, "a dog", set(), lambda caption: [("dog", 2, 40)])


def test_split_examples_routes_captions():
    captions = {1: ["a fork and a knife", "a fork", "a fork"], 2: "a dog"}
    forget, retain = split_examples(captions, {1: ["fork"], 2: []}, simple_finder)
    assert [example.caption for example in forget] == ["a fork and a knife", "a dog"]
    assert [example.caption for example in retain] == ["a fork"]  # the repeated caption counts once
    assert {example.key() for example in forget}.isdisjoint(example.key() for example in retain)


def test_split_examples_missing_annotations():
    with pytest.raises(KeyError, match="image id 3"):
        split_examples({3: "a dog"}, {1: []}, simple_finder)


class FakeWorld:
    """Two annotated 16x16 images in one split."""

    objects_by_id = {10: ["fork", "dining table"], 11: ["dog"]}

    def image_ids(self, split):
        return sorted(self.objects_by_id)

    def objects(self, split, image_id):
        return self.objects_by_id[image_id]

    def load_image(self, split, image_id):
        return Image.new("RGB", (16, 16), (image_id * 10, 0, 0))


def test_mine_unlearning_data_given_captions(tiny_vlm):
    captions = {10: "a fork and a knife on a table", 11: "a dog on the left"}
    data = mine_unlearning_data(tiny_vlm, FakeWorld(), "val", captions=captions, find_mentions=simple_finder)
    assert [example.image_id for example in data.forget] == [10]
    assert [example.image_id for example in data.retain] == [11]
    assert _covered(data.forget[0].caption, data.forget[0].forget_spans) == ["knife"]
    assert set(data.pixels) == {10, 11}
    assert data.pixels[10].shape == (3, 16, 16)
    assert not torch.equal(data.pixels[10], data.pixels[11])
    assert data.fingerprint("forget") != data.fingerprint("retain")


def test_mine_unlearning_data_generates_captions(tiny_vlm):
    data = mine_unlearning_data(tiny_vlm, FakeWorld(), "val", find_mentions=simple_finder, max_new_tokens=6)
    mined = [*data.forget, *data.retain]
    assert sorted(example.image_id for example in mined) == [10, 11]
    for example in data.forget:
        present = set(FakeWorld.objects_by_id[example.image_id])
        assert all(_CANONICAL[example.caption[s:e].lower()] not in present for s, e in example.forget_spans)


def test_mine_unlearning_data_rejects_unknown_caption_ids(tiny_vlm):
    with pytest.raises(ValueError, match=r"image ids \[99\]"):
        mine_unlearning_data(tiny_vlm, FakeWorld(), "val", captions={99: "a dog"}, find_mentions=simple_finder)
