"""CHAIR and POPE on hand-made captions and annotations with known counts; the COCO-format path on a small
hand-written instances file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.metrics.hallucination import (
    ObjectVocabulary,
    chair,
    coco_ground_truth,
    parse_yes_no,
    pope_metrics,
    pope_questions,
)

VOCAB = ObjectVocabulary({"dog": ("puppy",), "cat": ("kitten",), "bear": (), "teddy bear": ("teddy",),
                          "traffic light": (), "person": ("man", "people")})  # fmt: skip


def test_mentions_longest_phrase_first_plurals_and_synonyms() -> None:
    assert VOCAB.mentions("A teddy bear next to a bear.") == ["teddy bear", "bear"]
    assert VOCAB.mentions("Two puppies, three kittens and the dogs") == ["dog", "cat", "dog"]
    assert VOCAB.mentions("Traffic lights above two men and some people") == ["traffic light", "person", "person"]
    assert VOCAB.mentions("a light and a traffic cone; dogma") == []  # parts of phrases and of words do not count


def test_chair_counts_by_hand() -> None:
    captions = {
        1: "A dog and a cat on the sofa.",  # cat hallucinated
        2: "Two dogs. The dog sleeps.",  # 2 mentions, none hallucinated
        3: "A man holds a teddy bear near a traffic light.",  # teddy bear and traffic light hallucinated
    }
    truth = {1: {"dog"}, 2: {"dog", "cat"}, 3: {"person", "bear"}}
    r = chair(captions, truth, VOCAB)
    assert r["mentions"] == 7 and r["hallucinated_mentions"] == 3
    assert r["chair_i"] == pytest.approx(3 / 7)
    assert r["chair_s"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(3 / 5)  # dog; dog (not cat); person (not bear)
    assert r["per_caption"][2]["hallucinated"] == ["teddy bear", "traffic light"]
    with pytest.raises(KeyError, match="4"):
        chair({4: "a dog"}, truth, VOCAB)


def test_a_phrase_naming_two_objects_is_refused() -> None:
    with pytest.raises(ValueError, match="'pet' names two objects"):
        ObjectVocabulary({"dog": ("pet",), "cat": ("pet",)})


def test_coco_format_file(tmp_path: Path) -> None:
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({
        "images": [{"id": 10}, {"id": 11}, {"id": 12}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 88, "name": "teddy bear"},
                       {"id": 10, "name": "traffic light"}, {"id": 999, "name": "unicorn"}],
        "annotations": [{"image_id": 10, "category_id": 1}, {"image_id": 10, "category_id": 1},
                        {"image_id": 10, "category_id": 18}, {"image_id": 11, "category_id": 88}],
    }))  # fmt: skip
    vocab = ObjectVocabulary.from_coco(path)
    assert vocab.objects == ["person", "dog", "teddy bear", "traffic light", "unicorn"]
    truth = coco_ground_truth(path)
    assert truth == {10: {"person", "dog"}, 11: {"teddy bear"}, 12: set()}
    captions = {10: "Two women walk a puppy past traffic lights.", 11: "A teddy on a bed.", 12: "A unicorn."}
    r = chair(captions, truth, vocab)
    # COCO synonyms: women -> woman -> person, puppy -> dog, teddy -> teddy bear; bed is not a category here.
    assert [c["mentioned"] for c in r["per_caption"]] == [["person", "dog", "traffic light"], ["teddy bear"],
                                                          ["unicorn"]]  # fmt: skip
    assert r["chair_s"] == pytest.approx(2 / 3) and r["chair_i"] == pytest.approx(2 / 5)
    assert r["recall"] == pytest.approx(1.0)
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"categories": [{"id": 1, "name": "dog"}], "annotations": [{"image_id": 1, "category_id": 7}]})
    )
    with pytest.raises(ValueError, match=r"annotations\[0\] has unknown category_id 7"):
        coco_ground_truth(bad)
    (tmp_path / "nocat.json").write_text("{}")
    with pytest.raises(ValueError, match="nocat.json.*'categories'"):
        ObjectVocabulary.from_coco(tmp_path / "nocat.json")


def test_pope_metrics_by_hand() -> None:
    answers = ["Yes, there is.", "No.", "yes", "There is not.", "I think so", True]
    labels = [True, True, False, False, True, True]
    m = pope_metrics(answers, labels)
    # predictions: yes, no, yes, no, no (unparsed), yes -> tp 2, fp 1, fn 2, tn 1
    assert m["unparsed"] == 1 and m["questions"] == 6
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    assert parse_yes_no("Nope") is None and parse_yes_no("no, yes") is False


def test_pope_negative_sampling_modes() -> None:
    objects = ["dog", "cat", "bird", "fish", "horse", "cow"]
    stats = {0: {"dog", "cat"}, 1: {"dog", "cat"}, 2: {"dog", "bird"}, 3: {"fish"}, 4: {"fish"}, 5: {"fish"},
             6: {"fish", "horse"}}  # fmt: skip
    truth = {"a": {"dog"}, "b": {"horse", "cow"}}
    for mode in ("random", "popular", "adversarial"):
        qs = pope_questions(truth, objects, mode, per_image=1, seed=3, statistics=stats)
        assert sum(q["label"] for q in qs) == sum(not q["label"] for q in qs) == 2
        for q in qs:
            assert (q["object"] in truth[q["image"]]) == q["label"]
    neg = lambda mode, per: [q["object"] for q in pope_questions(truth, objects, mode, per, 0, stats)  # noqa: E731
                             if not q["label"] and q["image"] == "a"]  # fmt: skip
    assert neg("popular", 1) == ["fish"]  # the most frequent absent object (4 images)
    assert neg("adversarial", 1) == ["cat"]  # co-occurs with dog twice, bird once
    assert neg("adversarial", 1) != neg("popular", 1)
    assert sorted(neg("random", 3)) == sorted(set(neg("random", 3)))
    assert pope_questions(truth, objects, "random", 2, seed=1) == pope_questions(truth, objects, "random", 2, seed=1)
    with pytest.raises(ValueError, match="unknown POPE mode"):
        pope_questions(truth, objects, "hard", 1)  # type: ignore[arg-type]
