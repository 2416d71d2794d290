"""The inspect command: per split x body part counts as a table and as JSON."""

from __future__ import annotations

import json
from functools import partial

from helpers.runs import run_module

run_inspect = partial(run_module, "mura_lightning.data.inspect")


def test_json_counts_match_the_tree(mura_root, studies):
    (mura_root / "train/.DS_Store").write_bytes(b"junk")
    result = run_inspect(f"data.root={mura_root}", "format=json", "bodypart=[wrist,shoulder]")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == {"train": "csv", "valid": "csv"}
    rows = {(row["split"], row["body_part"]): row for row in report["counts"]}
    for split in ("train", "valid"):
        chosen = [s for s in studies if s.split == split]
        total = rows[(split, "all")]
        assert total["images"] == sum(s.images for s in chosen)
        assert total["studies"] == len(chosen)
        assert total["patients"] == len({s.patient for s in chosen})
        assert total["abnormal_studies"] == sum(s.label for s in chosen)
        wrist = [s for s in chosen if s.part == "wrist"]
        assert rows[(split, "wrist")]["normal_studies"] == sum(1 - s.label for s in wrist)


def test_table_names_the_source_and_skipped_files(mura_root):
    for csv in mura_root.glob("*.csv"):
        csv.unlink()
    (mura_root / "train/XR_WRIST/patient00001/study1_negative").mkdir(parents=True, exist_ok=True)
    (mura_root / "train/XR_WRIST/patient00001/study1_negative/._image1.png").write_bytes(b"apple")
    result = run_inspect(f"data.root={mura_root}", "bodypart=wrist")
    assert result.returncode == 0, result.stderr
    assert "train from folders, valid from folders" in result.stdout
    assert "skipped: 1 not_an_image" in result.stdout
    assert "wrist" in result.stdout and "shoulder" not in result.stdout


def test_bad_root_is_a_one_line_error(tmp_path):
    result = run_inspect(f"data.root={tmp_path}/missing")
    assert result.returncode == 2
    assert f"error: data.root={tmp_path}/missing does not exist" in result.stderr
    assert "Traceback" not in result.stderr
