"""Patient-bootstrap speed on a MURA-valid-sized study table, against a plain scikit-learn loop on the same
resamples; with `--coverage`, the coverage of 95 % intervals in a simulation with known population values.

    python benchmarks/bootstrap.py [--samples 2000] [--sklearn-samples 2000] [--coverage --repetitions 200]

MURA's valid split: 3,197 images in 1,199 studies of 783 patients, 7 body parts. The table here has the same
counts (images are averaged into their study's probability first, as evaluate does). Prints name=value lines.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mura_lightning.evaluation.bootstrap import (  # noqa: E402
    METRICS,
    OVERALL,
    bootstrap_weights,
    intervals,
    metric_values,
)

VALID_STUDIES = {  # MURA-v1.1 valid split: studies per body part (1,199 in all)
    "elbow": 158,
    "finger": 175,
    "forearm": 133,
    "hand": 167,
    "humerus": 135,
    "shoulder": 194,
    "wrist": 237,
}
VALID_PATIENTS = 783
VALID_IMAGES = 3197
CONFIDENCE = 0.95


def mura_valid_table(rng: np.random.Generator) -> pd.DataFrame:
    """A study table with MURA valid's counts: patients shared out over the body parts in proportion to their
    studies (each with at least one study), images over the studies; study probability = mean of its images'."""
    studies = np.array(list(VALID_STUDIES.values()))
    patients = np.floor(VALID_PATIENTS * studies / studies.sum()).astype(int)
    patients[np.argsort(-studies)[: VALID_PATIENTS - patients.sum()]] += 1
    frames, first_patient = [], 0
    for (part, count), owners in zip(VALID_STUDIES.items(), patients, strict=True):
        patient = np.r_[np.arange(owners), rng.integers(0, owners, count - owners)] + first_patient
        first_patient += owners
        frames.append(pd.DataFrame({"patient": patient, "body_part": part}))
    frame = pd.concat(frames, ignore_index=True)
    frame["label"] = (rng.random(len(frame)) < 0.45).astype(int)
    images = np.r_[np.arange(len(frame)), rng.integers(0, len(frame), VALID_IMAGES - len(frame))]
    logits = 1.5 * (frame["label"].to_numpy()[images] - 0.5) + rng.normal(size=VALID_IMAGES)
    frame["prob"] = pd.Series(1 / (1 + np.exp(-logits))).groupby(images).mean().to_numpy()
    frame["pred"] = (frame["prob"] > 0.5).astype(int)
    return frame


def sklearn_loop(frame: pd.DataFrame, weights: np.ndarray) -> int:
    """The six metrics by scikit-learn for each resample (study i repeated w[b, i] times), overall and per body
    part; returns how many values it computed."""
    groups = {part: np.flatnonzero(frame["body_part"] == part) for part in frame["body_part"].unique()}
    groups[OVERALL] = np.arange(len(frame))
    labels, probs, preds = (frame[column].to_numpy() for column in ("label", "prob", "pred"))
    computed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in weights.astype(int):
            for columns in groups.values():
                drawn = np.repeat(columns, row[columns])
                y, s, p = labels[drawn], probs[drawn], preds[drawn]
                cohen_kappa_score(y, p)
                if len(np.unique(y)) == 2:
                    roc_auc_score(y, s)
                recall_score(y, p, pos_label=1, zero_division=np.nan)
                recall_score(y, p, pos_label=0, zero_division=np.nan)
                accuracy_score(y, p)
                f1_score(y, p, zero_division=np.nan)
                computed += len(METRICS)
    return computed


def simulated_studies(rng: np.random.Generator, patients: dict[str, int]) -> pd.DataFrame:
    """1-3 studies per patient, labels and scores correlated within a patient (a patient-level tendency)."""
    frames = []
    for part, count in patients.items():
        studies = rng.integers(1, 4, size=count)
        patient = np.repeat(np.arange(count), studies)
        tendency = np.repeat(rng.normal(size=count), studies)
        label = (rng.random(len(patient)) < 1 / (1 + np.exp(-tendency))).astype(int)
        logit = 1.5 * (label - 0.5) + 0.5 * tendency + rng.normal(size=len(patient))
        prob = np.round(1 / (1 + np.exp(-logit)), 2)
        frames.append(pd.DataFrame({"patient": patient, "body_part": part, "label": label, "prob": prob}))
    frame = pd.concat(frames, ignore_index=True)
    return frame.assign(pred=(frame["prob"] > 0.5).astype(int))


def coverage(repetitions: int, patients: int, samples: int, seed: int) -> dict[str, float]:
    """Share of `repetitions` overall intervals holding the population value of each metric (population:
    100,000 patients in each of two body parts; each repetition draws `patients` per part)."""
    rng = np.random.default_rng(seed)
    population_size = 100_000
    population = simulated_studies(rng, {"hand": population_size, "wrist": population_size})
    truth = {name: values[0] for name, values in metric_values(population, np.ones((1, len(population)))).items()}
    by_part = [rows for _, rows in population.groupby("body_part")]
    hits = dict.fromkeys(METRICS, 0)
    for repetition in range(repetitions):
        drawn = [rows[rows["patient"].isin(rng.choice(population_size, patients, replace=False))] for rows in by_part]
        row = intervals(pd.concat(drawn), samples=samples, confidence=CONFIDENCE, seed=repetition).loc[OVERALL]
        for name in METRICS:
            hits[name] += row[f"{name}_ci_low"] <= truth[name] <= row[f"{name}_ci_high"]
    return {name: count / repetitions for name, count in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--sklearn-samples", type=int, default=None, help="resamples for the loop (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coverage", action="store_true", help="also run the coverage simulation")
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--coverage-patients", type=int, default=120, help="patients per body part")
    args = parser.parse_args()

    frame = mura_valid_table(np.random.default_rng(args.seed))
    print(f"studies={len(frame)} patients={frame['patient'].nunique()} parts={frame['body_part'].nunique()}")
    start = time.perf_counter()
    table = intervals(frame, samples=args.samples, confidence=CONFIDENCE, seed=args.seed)
    vectorised = time.perf_counter() - start
    print(table.loc[OVERALL, ["kappa", "kappa_ci_low", "kappa_ci_high"]].round(3).to_dict())

    looped = args.sklearn_samples or args.samples
    weights = bootstrap_weights(frame, args.samples, args.seed)[:looped]
    start = time.perf_counter()
    values = sklearn_loop(frame, weights)
    sklearn_seconds = time.perf_counter() - start
    sklearn_full = sklearn_seconds * args.samples / looped
    print(f"bootstrap_seconds={vectorised:.3f}")
    print(f"sklearn_loop_resamples={looped}")
    print(f"sklearn_loop_values={values}")
    print(f"sklearn_loop_seconds={sklearn_seconds:.3f}")
    print(f"sklearn_loop_seconds_for_all_samples={sklearn_full:.3f}")
    print(f"sklearn_over_bootstrap={sklearn_full / vectorised:.1f}")
    if args.coverage:
        start = time.perf_counter()
        covered = coverage(args.repetitions, args.coverage_patients, args.samples, args.seed)
        for name, share in covered.items():
            print(f"coverage_{name}={share:.3f}")
        print(f"coverage_seconds={time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main()
