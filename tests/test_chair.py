"""Tests of the CHAIR metric: parsing rules, metrics, ground truth, command line and reference parity."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halluc_bench.tasks.chair import (
    ChairEvaluator,
    MissingGroundTruthError,
    Synonyms,
    build_two_word_map,
    extract_objects,
    find_mentions,
    load_synonyms,
)
from halluc_bench.tasks.chair_cli import add_chair_parser
from halluc_bench.tasks.chair_text import (
    PINNED_TAGS,
    load_pos_tagger,
    singularize_pattern,
    tokenize_caption,
    validate_lemmatizer,
)
from halluc_bench.tasks.chair_wordnet import (
    load_wordnet_morphology,
    read_wordnet_database,
    write_morphology_data,
)

FIXTURES = Path(__file__).parent / "fixtures" / "chair"
GOLDEN_DIR = "vlm-decoding-hal/re_log/llava-1.5"
WORDNET_GT = "_derived/chair_gt_objects_wordnet_lemmatizer.json"
PATTERN_GT = "_derived/chair_gt_objects_pattern_singularize.json"
LEMMATIZERS = ("wordnet", "pattern")


@pytest.fixture(scope="module")
def synonyms() -> Synonyms:
    return load_synonyms()


def objects_of(caption: str, lemmatizer: str) -> list[str]:
    return [mention.object for mention in extract_objects(caption, lemmatizer=lemmatizer)]


# ---------------------------------------------------------------- synonym list


def test_synonyms_default_names_80_objects(synonyms):
    assert len(synonyms.canonical) == 80
    assert synonyms.canonical[0] == "person"
    assert synonyms.to_canonical["puppy"] == "dog"
    assert synonyms.to_canonical["table"] == "dining table"


def test_synonyms_double_space_entry_unmatchable(synonyms):
    assert " motor bike" in synonyms.unmatchable
    assert "motor bike" not in synonyms


def test_synonyms_later_line_wins(tmp_path):
    path = tmp_path / "synonyms.txt"
    path.write_text("dog, pup\ncat, pup\n\n", encoding="utf-8")
    loaded = load_synonyms(path)
    assert loaded.canonical == ("dog", "cat")
    assert loaded.to_canonical["pup"] == "cat"


def test_synonyms_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="synonym list not found"):
        load_synonyms(tmp_path / "absent.txt")


def test_synonyms_empty_file_raises(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="names no objects"):
        load_synonyms(path)


# ---------------------------------------------------------------- parsing rules


def test_two_word_map_special_rules():
    pairs = build_two_word_map()
    assert pairs["teddy bear"] == "teddy bear"
    assert pairs["baby elephant"] == "elephant"
    assert pairs["adult bear"] == "bear"
    assert pairs["passenger train"] == "train"
    assert pairs["passenger jet"] == "jet"
    assert pairs["bow tie"] == "tie"
    assert pairs["toilet seat"] == "toilet"


SPECIAL_PHRASES = [
    ("A hot dog sits on a plate.", ["hot dog"]),
    ("Two teddy bears sit on a bed.", ["teddy bear", "bed"]),
    ("A baby elephant walks in the mud.", ["elephant"]),
    ("An adult bear stands in the grass.", ["bear"]),
    ("The toilet seat is up.", ["toilet"]),
    ("A passenger train waits at the station.", ["train"]),
    ("A passenger jet on the runway.", ["airplane"]),
    ("A man wearing a bow tie.", ["person", "tie"]),
    ("Two wine glasses on a counter.", ["wine glass"]),
    ("A fire hydrant near a stop sign.", ["fire hydrant", "stop sign"]),
    ("A potted plant next to a cell phone.", ["potted plant", "cell phone"]),
]


@pytest.mark.parametrize("lemmatizer", LEMMATIZERS)
@pytest.mark.parametrize(("caption", "expected"), SPECIAL_PHRASES)
def test_special_phrase_objects(caption, expected, lemmatizer):
    assert objects_of(caption, lemmatizer) == expected


@pytest.mark.parametrize("lemmatizer", LEMMATIZERS)
def test_toilet_and_seat_no_chair(lemmatizer):
    assert objects_of("A bathroom with a toilet and a seat by the window.", lemmatizer) == ["toilet"]
    assert objects_of("A seat by the window.", lemmatizer) == ["chair"]


@pytest.mark.parametrize("lemmatizer", LEMMATIZERS)
def test_irregular_plurals_objects(lemmatizer):
    assert objects_of("Two women and several children.", lemmatizer) == ["person", "person"]
    assert objects_of("Knives and forks.", lemmatizer) == ["knife", "fork"]
    assert objects_of("Two mice next to keyboards.", lemmatizer) == ["mouse", "keyboard"]
    assert objects_of("People walking under umbrellas.", lemmatizer) == ["person", "umbrella"]
    assert objects_of("Sheep and geese in a field.", lemmatizer) == ["sheep", "bird"]


def test_men_wordnet_keeps_form():
    # WordNet lists both "men" and "man" as nouns; NLTK's lemmatizer keeps the earliest of the
    # shortest lemmas, "men", which names no object. The reference output has 36 such "men".
    assert objects_of("Three men walk.", "wordnet") == []
    assert objects_of("Three men walk.", "pattern") == ["person"]


def test_repeats_counted_in_order():
    assert objects_of("A dog chases a cat. The dog barks.", "wordnet") == ["dog", "cat", "dog"]


def test_mention_span_covers_phrase():
    caption = "Two Teddy Bears on a sofa."
    mentions = extract_objects(caption)
    assert [caption[start:end] for start, end in (m.span for m in mentions)] == ["Teddy Bears", "sofa"]


def test_mention_span_merged_animal():
    caption = "A baby elephant."
    (mention,) = extract_objects(caption)
    assert caption[mention.span[0]:mention.span[1]] == "baby elephant"


def test_mention_span_after_length_changing_lowercase():
    caption = "İİ a dog"  # "İ".lower() is two characters long
    (mention,) = extract_objects(caption)
    assert caption[mention.span[0]:mention.span[1]] == "dog"


def test_mention_span_after_quotes():
    caption = 'A "dog" on a "bench".'
    mentions = extract_objects(caption)
    assert [caption[m.span[0]:m.span[1]] for m in mentions] == ["dog", "bench"]


def test_mention_index_points_into_merged_words():
    evaluator = ChairEvaluator({7: ["teddy bear"]})
    report = evaluator.score([(7, "A teddy bear and a cat on a sofa.")])
    caption = report.per_caption[0]
    assert caption.words[:4] == ("a", "teddy bear", "and", "a")
    assert caption.hallucinated_words == ("cat", "sofa")
    assert caption.hallucination_indices == (4, 7)
    assert [caption.words[index] for index in caption.hallucination_indices] == ["cat", "sofa"]


def test_tokenize_sentence_periods_split():
    assert [token.text for token in tokenize_caption("A dog. The cat.")] == ["a", "dog", ".", "the", "cat", "."]


def test_tokenize_abbreviation_kept():
    assert [token.text for token in tokenize_caption("A U.S. flag.")] == ["a", "u.s.", "flag", "."]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_extract_objects_fuzz_never_crashes(text):
    for lemmatizer in LEMMATIZERS:
        for mention in extract_objects(text, lemmatizer=lemmatizer):
            assert 0 <= mention.span[0] <= mention.span[1] <= len(text)


# ---------------------------------------------------------------- lemmatizers


def test_validate_lemmatizer_lists_valid_names():
    with pytest.raises(KeyError, match="pattern, wordnet"):
        validate_lemmatizer("wordnett")


def test_evaluator_unknown_lemmatizer_raises():
    with pytest.raises(KeyError, match="Did you mean 'wordnet'"):
        ChairEvaluator({}, lemmatizer="wordnett")


@pytest.mark.parametrize(
    ("word", "pos", "lemma"),
    [
        # Outputs documented in NLTK's WordNetLemmatizer docstrings.
        ("dogs", "n", "dog"),
        ("churches", "n", "church"),
        ("aardwolves", "n", "aardwolf"),
        ("abaci", "n", "abacus"),
        ("hardrock", "n", "hardrock"),
        ("us", "n", "u"),
        # Exception lists and suffix rules per part of speech.
        ("mice", "n", "mouse"),
        ("knives", "n", "knife"),
        ("glasses", "n", "glass"),
        ("has", "n", "ha"),
        ("sitting", "v", "sit"),
        ("is", "v", "be"),
        ("closer", "a", "close"),
        ("quickly", "r", "quickly"),
    ],
)
def test_wordnet_lemmatize(word, pos, lemma):
    assert load_wordnet_morphology().lemmatize(word, pos) == lemma


def test_wordnet_unknown_pos_raises():
    with pytest.raises(ValueError, match="unknown part of speech"):
        load_wordnet_morphology().candidates("dog", "x")


def test_wordnet_build_round_trip(tmp_path):
    morphology = read_wordnet_database(FIXTURES / "wordnet_mini")
    output = write_morphology_data(morphology, tmp_path / "mini.json.gz")
    loaded = load_wordnet_morphology(str(output))
    assert loaded.lemmatize("mice") == "mouse"
    assert loaded.lemmatize("buses") == "bus"
    assert loaded.lemmatize("men") == "men"
    assert loaded.lemmatize("sat", "v") == "sit"
    assert loaded.lemmatize("closer", "a") == "close"
    assert "closely" in loaded.lemmas["r"]


def test_wordnet_build_deterministic(tmp_path):
    morphology = read_wordnet_database(FIXTURES / "wordnet_mini")
    first = write_morphology_data(morphology, tmp_path / "a.json.gz").read_bytes()
    second = write_morphology_data(morphology, tmp_path / "b.json.gz").read_bytes()
    assert first == second


def test_wordnet_build_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.noun"):
        read_wordnet_database(tmp_path)


def test_tagger_tags_and_pins():
    tagger = load_pos_tagger()
    tags = dict(tagger.tag(["a", "dog", "is", "sitting", "near", "a", "potted", "plant"]))
    assert tags["dog"] == "NN"
    assert tags["sitting"] == "VBG"
    assert tags["potted"] == PINNED_TAGS["potted"]


@pytest.mark.parametrize(
    ("word", "singular"),
    [
        ("dogs", "dog"),
        ("glasses", "glass"),
        ("glass", "glas"),
        ("buses", "bus"),
        ("bus", "bu"),
        ("has", "ha"),
        ("is", "is"),  # "is" ends the uninflected word "debris"
        ("as", "as"),  # "as" ends the uninflected word "christmas"
        ("jeans", "jean"),
        ("people", "person"),
        ("mice", "mouse"),
        ("knives", "knife"),
        ("dogs'", "dog's"),
        ("mothers-in-law", "mother-in-law"),
        ("'s", "'"),
    ],
)
def test_singularize_pattern(word, singular):
    assert singularize_pattern(word) == singular


# ---------------------------------------------------------------- metrics


def test_score_metrics_by_hand():
    evaluator = ChairEvaluator({1: ["dog", "bed"], 2: ["person", "chair", "cup"]})
    report = evaluator.score([
        (1, "A dog and a cat on a bed. The cat sleeps."),  # dog, cat, bed, cat: 2 of 4 hallucinated
        ("2", "A man sits on a chair."),  # person, chair: none hallucinated
    ])
    assert report.n == 2
    assert report.mentions == 6
    assert report.hallucinated_mentions == 2
    assert report.chair_i == pytest.approx(2 / 6)
    assert report.chair_s == pytest.approx(1 / 2)
    assert report.recall == pytest.approx((2 + 2) / (2 + 3))
    assert report.len == pytest.approx((13 + 7) / 2 / 100)


def test_score_no_mentions_zero_chair_i():
    report = ChairEvaluator({1: ["dog"]}).score([(1, "Nothing here.")])
    assert report.chair_i == 0.0
    assert report.chair_s == 0.0
    assert report.recall == 0.0


def test_score_empty_ground_truth_all_hallucinated():
    report = ChairEvaluator({3: []}).score([(3, "A dog.")])
    assert report.per_caption[0].hallucinated_objects == ("dog",)
    assert report.recall == 0.0


def test_score_missing_ground_truth_lists_ids():
    evaluator = ChairEvaluator({1: ["dog"]})
    captions = [(1, "A dog.")] + [(image_id, "A cat.") for image_id in range(100, 108)]
    with pytest.raises(MissingGroundTruthError) as caught:
        evaluator.score(captions)
    message = str(caught.value)
    assert message.startswith("8 image id(s)")
    assert "100, 101, 102, 103, 104 and 3 more" in message


def test_score_no_captions_raises():
    with pytest.raises(ValueError, match="no captions"):
        ChairEvaluator({1: ["dog"]}).score([])


def test_score_bad_image_id_raises():
    with pytest.raises(ValueError, match="not an integer"):
        ChairEvaluator({1: ["dog"]}).score([("one", "A dog.")])


def test_report_to_dict_keys():
    report = ChairEvaluator({1: ["dog"]}).score([(1, "A dog and a cat.")])
    payload = report.to_dict()
    assert {"chair_s", "chair_i", "recall", "len", "n"} <= set(payload)
    record = payload["per_caption"][0]
    assert record["generated_objects"] == ["dog", "cat"]
    assert record["hallucinated_objects"] == ["cat"]
    assert record["hallucination_indices"] == [4]


# ---------------------------------------------------------------- ground truth


def test_from_coco_instances_and_captions():
    evaluator = ChairEvaluator.from_coco(FIXTURES / "coco" / "instances_toy.json", FIXTURES / "coco" / "captions_toy.json")
    assert evaluator.gt_objects[1] == frozenset({"dog", "bed"})
    assert evaluator.gt_objects[2] == frozenset({"person", "chair"})
    assert evaluator.gt_objects[3] == frozenset()


def test_from_coco_dir_matches_files():
    evaluator = ChairEvaluator.from_coco_dir(FIXTURES / "coco")
    assert evaluator.gt_objects[1] == frozenset({"dog", "bed"})


def test_from_coco_dir_without_files_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_"):
        ChairEvaluator.from_coco_dir(tmp_path)


def test_from_coco_unknown_category_raises(tmp_path):
    data = json.loads((FIXTURES / "coco" / "instances_toy.json").read_text())
    data["categories"].append({"id": 99, "name": "unicorn"})
    data["annotations"].append({"id": 50, "image_id": 1, "category_id": 99})
    path = tmp_path / "instances_bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'unicorn' is not in the synonym list"):
        ChairEvaluator.from_coco(path, FIXTURES / "coco" / "captions_toy.json")


def test_from_gt_json_string_ids():
    evaluator = ChairEvaluator.from_gt_json(FIXTURES / "gt_objects.json")
    assert evaluator.gt_objects[1] == frozenset({"dog", "bed"})
    assert evaluator.gt_objects[3] == frozenset()


def test_from_gt_json_bad_value_raises(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text('{"1": "dog"}')
    with pytest.raises(ValueError, match="expected a list"):
        ChairEvaluator.from_gt_json(path)


# ---------------------------------------------------------------- command line


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="halluc-bench")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score").add_subparsers(dest="benchmark", required=True)
    add_chair_parser(score)
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_json_matches_api(capsys):
    captions = FIXTURES / "captions_pretty_crlf.json"
    code = run_cli([
        "score", "chair", "--captions", str(captions), "--gt-objects", str(FIXTURES / "gt_objects.json"), "--json",
    ])
    printed = json.loads(capsys.readouterr().out)
    evaluator = ChairEvaluator.from_gt_json(FIXTURES / "gt_objects.json")
    report = evaluator.score([(1, "A dog sleeps on a bed next to a cat."), (2, "A man sits on a chair.")])
    assert code == 0
    assert set(printed) == {"chair_s", "chair_i", "recall", "len", "n"}
    assert printed == report.summary()


def test_cli_coco_dir_per_caption(tmp_path, capsys):
    output = tmp_path / "per_caption.jsonl"
    code = run_cli([
        "score", "chair", "--captions", str(FIXTURES / "captions_pretty_crlf.json"),
        "--coco-annotations", str(FIXTURES / "coco"), "--per-caption", str(output),
    ])
    table = capsys.readouterr().out
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert code == 0
    assert "CHAIR_i" in table
    assert len(records) == 2
    assert records[0]["hallucinated_objects"] == ["cat"]
    assert records[0]["words"][records[0]["hallucination_indices"][0]] == "cat"


def test_cli_registered_under_score(capsys):
    from halluc_bench.tasks.score_cli import add_score_command

    parser = argparse.ArgumentParser(prog="halluc-bench")
    add_score_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "score", "chair", "--captions", str(FIXTURES / "captions_pretty_crlf.json"),
        "--gt-objects", str(FIXTURES / "gt_objects.json"), "--json",
    ])
    code = args.handler(args)
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed["n"] == 2


def test_cli_missing_ground_truth_exit_2(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"image_id": 42, "caption": "A dog."}\n')
    code = run_cli(["score", "chair", "--captions", str(captions), "--gt-objects", str(FIXTURES / "gt_objects.json")])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("halluc-bench: error: 1 image id(s)")
    assert error.count("\n") == 1


def test_cli_unknown_lemmatizer_exit_2(capsys):
    code = run_cli([
        "score", "chair", "--captions", str(FIXTURES / "captions_pretty_crlf.json"),
        "--gt-objects", str(FIXTURES / "gt_objects.json"), "--lemmatizer", "porter",
    ])
    error = capsys.readouterr().err
    assert code == 2
    assert "registered: pattern, wordnet" in error


def test_cli_record_without_caption_exit_2(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"image_id": 1, "text": "A dog."}\n')
    code = run_cli(["score", "chair", "--captions", str(captions), "--gt-objects", str(FIXTURES / "gt_objects.json")])
    error = capsys.readouterr().err
    assert code == 2
    assert "record 1 lacks caption" in error


# ---------------------------------------------------------------- reference parity (real data)


@pytest.fixture(scope="module")
def wordnet_evaluator(realfile):
    return ChairEvaluator.from_gt_json(realfile(WORDNET_GT))


def load_golden(realfile, name: str) -> dict:
    return json.loads(realfile(f"{GOLDEN_DIR}/{name}").read_text(encoding="utf-8"))


def score_golden(evaluator, golden):
    captions = [(sentence["image_id"], sentence["caption"]) for sentence in golden["sentences"]]
    report = evaluator.score(captions)
    agreeing = sum(
        list(score.generated_objects) == sentence["mscoco_generated_words"]
        and [[word, obj] for word, obj in zip(score.hallucinated_words, score.hallucinated_objects)]
        == [list(pair) for pair in sentence["mscoco_hallucinated_words"]]
        for score, sentence in zip(report.per_caption, golden["sentences"])
    )
    return report, agreeing / len(captions)


@pytest.fixture(scope="module")
def golden_scored(wordnet_evaluator, realfile):
    """Return a function that loads a golden file and scores its captions once per module."""
    cache: dict[str, tuple] = {}

    def scored(name: str):
        if name not in cache:
            golden = load_golden(realfile, name)
            cache[name] = (golden, *score_golden(wordnet_evaluator, golden))
        return cache[name]

    return scored


def test_golden_regular_overall_4_decimals(golden_scored):
    golden, report, _ = golden_scored("regular_chair.jsonl")
    expected = golden["overall_metrics"]
    assert round(report.chair_s, 4) == round(expected["CHAIRs"], 4)
    assert round(report.chair_i, 4) == round(expected["CHAIRi"], 4)
    assert round(report.recall, 4) == round(expected["Recall"], 4)
    assert round(report.len, 4) == round(expected["Len"], 4)


def test_golden_deco_overall(golden_scored):
    golden, report, _ = golden_scored("deco_chair.jsonl")
    expected = golden["overall_metrics"]
    assert round(report.chair_s, 4) == round(expected["CHAIRs"], 4)
    assert round(report.recall, 4) == round(expected["Recall"], 4)
    # Measured gap from tagger disagreements: CHAIR_i 0.10173 vs 0.10154, len 0.97694 vs 0.97696.
    assert report.chair_i == pytest.approx(expected["CHAIRi"], abs=3e-4)
    assert report.len == pytest.approx(expected["Len"], abs=5e-5)


@pytest.mark.xfail(strict=True, reason="the shipped tagger model tags a few words differently from NLTK's model")
def test_golden_deco_chair_i_4_decimals(golden_scored):
    golden, report, _ = golden_scored("deco_chair.jsonl")
    assert round(report.chair_i, 4) == round(golden["overall_metrics"]["CHAIRi"], 4)


@pytest.mark.parametrize(("name", "measured_floor"), [("regular_chair.jsonl", 0.985), ("deco_chair.jsonl", 0.955)])
def test_golden_per_caption_agreement(golden_scored, name, measured_floor):
    # Measured: 494 of 500 (regular) and 480 of 500 (deco) captions agree exactly.
    _, _, agreement = golden_scored(name)
    assert agreement >= measured_floor


@pytest.mark.xfail(strict=True, reason="the shipped tagger model tags a few words differently from NLTK's model")
def test_golden_deco_agreement_99_percent(golden_scored):
    _, _, agreement = golden_scored("deco_chair.jsonl")
    assert agreement >= 0.99


@pytest.mark.parametrize("name", ["regular_chair.jsonl", "deco_chair.jsonl"])
def test_golden_words_give_same_objects(wordnet_evaluator, realfile, synonyms, name):
    # Given the reference's own lemmas, the mention and hallucination rules agree on every caption.
    golden = load_golden(realfile, name)
    for sentence in golden["sentences"]:
        words = sentence["words"]
        mentions = find_mentions(words, [(0, 0)] * len(words), synonyms)
        truth = wordnet_evaluator.gt_objects[sentence["image_id"]]
        assert [m.object for m in mentions] == sentence["mscoco_generated_words"], sentence["image_id"]
        hallucinated = [[m.word, m.object] for m in mentions if m.object not in truth]
        assert hallucinated == [list(pair) for pair in sentence["mscoco_hallucinated_words"]], sentence["image_id"]


def test_golden_original_synonyms_beat_modified(wordnet_evaluator, golden_scored, realfile):
    golden, _, original_agreement = golden_scored("regular_chair.jsonl")
    modified = ChairEvaluator(wordnet_evaluator.gt_objects, synonyms=load_synonyms(realfile("efuf/dataset/synonyms.txt")))
    _, modified_agreement = score_golden(modified, golden)
    assert original_agreement > modified_agreement


def test_golden_scoring_speed(wordnet_evaluator, realfile):
    golden = load_golden(realfile, "regular_chair.jsonl")
    captions = [(sentence["image_id"], sentence["caption"]) for sentence in golden["sentences"]]
    started = time.perf_counter()
    wordnet_evaluator.score(captions)
    assert time.perf_counter() - started < 30  # measured about 2-3 s on 2 shared cores


def test_standalone_pattern_outputs(realfile):
    expected = json.loads(realfile("CHAIR-metric-standalone/outputs.json").read_text(encoding="utf-8"))
    inputs = [json.loads(line) for line in realfile("CHAIR-metric-standalone/example_inputs.jsonl").read_text().splitlines()]
    evaluator = ChairEvaluator.from_gt_json(realfile(PATTERN_GT), lemmatizer="pattern")
    report = evaluator.score([(record["image_id"], record["caption"]) for record in inputs])
    assert report.chair_s == expected["overall_metrics"]["CHAIRs"]
    assert report.chair_i == expected["overall_metrics"]["CHAIRi"]
    assert report.recall == pytest.approx(expected["overall_metrics"]["Recall"])
    for score, sentence in zip(report.per_caption, expected["sentences"]):
        assert list(score.words) == sentence["words"]
        assert list(score.generated_objects) == sentence["mscoco_generated_words"]
        assert sorted(score.gt_objects) == sorted(sentence["mscoco_gt_words"])
        assert score.recall == pytest.approx(sentence["metrics"]["Recall"])
