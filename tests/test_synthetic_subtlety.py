"""Per-body-part lesion subtlety and the global difficulty: checked settings, smaller and fainter lesions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.synthetic import SyntheticDataError, generate_synthetic_mura, load_spec
from mura_lightning.synthetic.render import render_image
from mura_lightning.synthetic.spec import LESION_DENSITY_KNOBS, LESION_KINDS, visibility

SMALL = dict(root="unused", studies_per_part=4, seed=0, min_side=120, max_side=200, num_workers=1)
# Lesions drawn with no density at all (and no displaced fragment): the same draws, so the same image as the
# lesion's, minus the lesion. Their difference is what the lesion adds to the image.
NO_LESION = {**{name: [0.0, 0.0] for name in LESION_DENSITY_KNOBS}, "fracture_shift": [0, 0]}
NO_LESION["fracture_angulation_deg"] = [0, 0]
IMAGES = 4  # per body part and lesion kind


def lesion_measure(part: str, **knobs) -> tuple[float, float]:
    """What `part`'s lesions add to rendered images, summed over every lesion kind and IMAGES seeds: the mean
    absolute pixel change (fraction of full scale, per image pixel) and the lesion boxes' share of the image."""
    spec, blank = load_spec(**SMALL, **knobs), load_spec(**SMALL, **{**knobs, **NO_LESION})
    change = area = 0.0
    for kind in LESION_KINDS:
        for seed in range(IMAGES):
            image, lesions = render_image(part, np.random.default_rng(seed), spec, kind)
            reference, _ = render_image(part, np.random.default_rng(seed), blank, kind)
            change += float(np.abs(image.astype(np.float32) - reference).mean()) / 255
            area += sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in (lesion.box for lesion in lesions)) / image.size
    return change, area


def test_a_subtler_body_part_gets_smaller_fainter_lesions():
    full_change, full_area = lesion_measure("forearm", subtlety={"forearm": 0.0})
    subtle_change, subtle_area = lesion_measure("forearm", subtlety={"forearm": 0.6})
    assert full_change > 0 and full_area > 0
    assert subtle_change < 0.6 * full_change, (subtle_change, full_change)
    assert subtle_area < full_area, (subtle_area, full_area)


def test_difficulty_scales_every_subtlety():
    easy, default, hard = (lesion_measure("elbow", difficulty=d)[0] for d in (0.0, 1.0, 2.0))
    assert hard < default < easy
    spec = load_spec(**SMALL, difficulty=0.0)
    assert all(visibility(spec, part) == 1.0 for part in BODY_PARTS)


def test_difficulty_zero_draws_what_no_subtlety_draws():
    no_subtlety = load_spec(**SMALL, subtlety=dict.fromkeys(BODY_PARTS, 0.0))
    for kind in LESION_KINDS:
        a, _ = render_image("finger", np.random.default_rng(3), load_spec(**SMALL, difficulty=0.0), kind)
        b, _ = render_image("finger", np.random.default_rng(3), no_subtlety, kind)
        assert np.array_equal(a, b)


def test_by_default_finger_lesions_are_the_faintest_and_wrist_and_hand_the_plainest():
    spec = load_spec(**SMALL)
    assert min(BODY_PARTS, key=lambda part: visibility(spec, part)) == "finger"
    assert visibility(spec, "wrist") == visibility(spec, "hand") == max(visibility(spec, p) for p in BODY_PARTS)
    change = {part: lesion_measure(part)[0] for part in ("finger", "hand", "wrist")}
    assert change["finger"] < min(change["hand"], change["wrist"]), change
    kept = {part: lesion_measure(part)[0] / lesion_measure(part, difficulty=0.0)[0] for part in ("finger", "wrist")}
    assert kept["finger"] < 0.5 < kept["wrist"] == pytest.approx(1.0), kept


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"subtlety": {"toe": 0.5}}, r"subtlety needs exactly the body parts .*unknown: \['toe'\]"),
        ({"subtlety": {"finger": 1.0}}, r"subtlety values must lie in \[0, 1\).*'finger': 1\.0"),
        ({"subtlety": {"wrist": -0.2}}, r"subtlety values must lie in \[0, 1\).*'wrist': -0\.2"),
        ({"difficulty": -1.0}, r"difficulty=-1\.0 must be a finite number >= 0"),
        ({"difficulty": math.inf}, r"difficulty=inf must be a finite number >= 0"),
        ({"subtlety": {"finger": "hard"}}, r"(?s)'hard'.*could not be converted.*subtlety\.finger"),
    ],
)
def test_bad_subtlety_or_difficulty_is_refused_before_anything_is_written(tmp_path, knobs, message):
    with pytest.raises(SyntheticDataError, match=message):
        generate_synthetic_mura(tmp_path, studies_per_part=4, seed=0, **knobs)
    assert list(tmp_path.iterdir()) == []
