"""Collects one run of benchmarks/gpu_check.sh into OUT/gpu_results.json: the machine, each stage's outcome, the
test results, the figures and the goals they are held to; and prints the same in short.

python benchmarks/gpu_summary.py --work WORK --out OUT [--dry-run] [--wall-s SECONDS] [--tests-file FILE]

Standard library only, so that it runs even where the package or its dependencies could not be installed.
WORK holds what the stages left: env.json, stages.tsv (stage, status, rc, seconds), figures.jsonl (one
{name: value} per line, from gpu.py and paper_scale.py --results), junit.xml and tests.log (from pytest). With
--tests-file (the checks' source, tests/test_gpu.py), every check `test_<letter>_...` it defines gets an outcome,
"not run" when pytest was stopped before reaching it or never started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

RESULTS_FILE = "gpu_results.json"
# Goals of issues 14 and 20: training images/s of the best bf16 variant on one GPU at 320 px, the loader against the
# fastest model, Lightning against the plain loop, and a paper-scale epoch end to end (benchmarks/paper_scale.py)
# against the model-only figure of its variant.
TRAINING_GOALS = {"densenet169": 1500.0, "resnet50": 3000.0}
LOADER_OVER_MODEL_GOAL = 2.0
LIGHTNING_OVER_PLAIN_GOAL = 0.95
EPOCH_OVER_MODEL_GOAL = 0.9
TEST_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")
CHECK_DEFINITION = re.compile(r"^def (test_([a-z])_\w+)\(", re.MULTILINE)
OUTCOME_ORDER = ("error", "failed", "not run", "skipped", "xfail", "xpass", "passed")  # a check's worst case wins


def read_stages(path: Path) -> dict[str, dict]:
    """Each stage's status, exit code and seconds, in the order they ran."""
    stages = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, code, seconds = line.split("\t")
            stages[name] = {"status": status, "rc": int(code), "seconds": round(float(seconds), 1)}
    return stages


def read_figures(path: Path) -> dict[str, float]:
    """The figures gpu.py wrote, later lines winning."""
    figures: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                figures.update(json.loads(line))
    return figures


def read_tests(junit: Path, log: Path) -> dict[str, dict]:
    """Test name -> outcome (and message), from pytest's JUnit XML, or from its -v log when pytest was stopped
    before writing the XML."""
    outcomes: dict[str, dict] = {}
    if junit.exists():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            outcome = {"outcome": "passed", "seconds": round(float(case.get("time", 0.0)), 1)}
            for tag in ("failure", "error", "skipped"):
                element = case.find(tag)
                if element is not None:
                    outcome["outcome"] = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    outcome["message"] = (element.get("message") or "")[:500]
            outcomes[name] = outcome
    elif log.exists():
        for line in log.read_text(errors="replace").splitlines():
            match = TEST_LINE.match(line)
            if match:
                outcomes[match.group(1)] = {"outcome": match.group(2).lower()}
    return outcomes


def read_checks(tests_file: Path | None, tests: dict[str, dict]) -> dict[str, dict]:
    """Check letter -> its test function and outcome (the worst of its cases; "not run" when none ran), for
    every check `tests_file` defines."""
    if tests_file is None or not tests_file.exists():
        return {}
    checks = {}
    for function, letter in CHECK_DEFINITION.findall(tests_file.read_text()):
        cases = [outcome for name, outcome in tests.items() if re.search(rf"::{function}(\[|$)", name)]
        outcomes = [case["outcome"] for case in cases] or ["not run"]
        worst = min(outcomes, key=lambda outcome: OUTCOME_ORDER.index(outcome) if outcome in OUTCOME_ORDER else 0)
        messages = [case["message"] for case in cases if case.get("message")]
        checks[letter] = {"test": function, "outcome": worst, **({"message": messages[0]} if messages else {})}
    return checks


def best(figures: dict[str, float], prefix: str) -> tuple[str, float] | None:
    """The highest figure whose name starts with `prefix`, with its name."""
    found = [(name, value) for name, value in figures.items() if name.startswith(prefix)]
    return max(found, key=lambda item: item[1]) if found else None


def goal(value: float | None, target: float, at_least: bool = True, **extra) -> dict:
    """A goal's record: `met` is null when the figure was not measured."""
    met = None if value is None else (value >= target if at_least else value <= target)
    return {"value": value, "target": target, "met": met, **extra}


def goals(figures: dict[str, float], judged: bool = True) -> dict[str, dict]:
    """The goals of the issue, each with the figure that decides it; `met` is null when the figure was not
    measured or not `judged` (a dry run's figures say nothing about a GPU)."""
    results = {}
    fastest = best(figures, "train_images_per_s/")
    for backbone, target in TRAINING_GOALS.items():
        found = best(figures, f"train_images_per_s/{backbone}/bf16/")
        name, value = found if found else (None, None)
        results[f"{backbone}_bf16_best_images_per_s"] = goal(value, target, variant=name)
    loader = best(figures, "pipeline_images_per_s/")
    ratio = loader[1] / fastest[1] if loader and fastest else None
    results["loader_over_fastest_model"] = goal(
        ratio, LOADER_OVER_MODEL_GOAL, loader=loader and loader[0], model=fastest and fastest[0]
    )
    lightning = best(figures, "lightning_over_plain/")
    results["lightning_over_plain_median"] = goal(lightning and lightning[1], LIGHTNING_OVER_PLAIN_GOAL)
    for backbone in TRAINING_GOALS:
        epoch_over_model = figures.get(f"epoch_over_model/{backbone}")
        results[f"{backbone}_epoch_over_model"] = goal(epoch_over_model, EPOCH_OVER_MODEL_GOAL)
    if not judged:
        for record in results.values():
            record["met"] = None
    return results


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as file:
        json.dump(data, file, indent=2, allow_nan=True)
    os.replace(temporary, path)


def summarise(work: Path, dry_run: bool, wall_s: float | None, tests_file: Path | None = None) -> dict:
    """Everything one run left in `work`, as one dictionary."""
    environment = json.loads((work / "env.json").read_text()) if (work / "env.json").exists() else {}
    stages = read_stages(work / "stages.tsv")
    tests = read_tests(work / "junit.xml", work / "tests.log")
    figures = read_figures(work / "figures.jsonl")
    counts: dict[str, int] = {}
    for outcome in tests.values():
        counts[outcome["outcome"]] = counts.get(outcome["outcome"], 0) + 1
    return {
        "card": environment.get("card", "unknown (the env step did not run)"),
        "dry_run": dry_run,
        "ok": all(stage["status"] == "ok" or stage["status"].startswith("skipped") for stage in stages.values()),
        "wall_s": wall_s,
        "environment": environment,
        "stages": stages,
        "test_counts": counts,
        "tests": tests,
        "checks": read_checks(tests_file, tests),
        "figures": figures,
        "goals": goals(figures, judged=not dry_run),
    }


def report(results: dict) -> str:
    """A few lines for the log: card, stages, failed tests, goals."""
    lines = [f"card: {results['card']}  dry run: {results['dry_run']}  ok: {results['ok']}"]
    lines += [f"stage {name}: {s['status']} ({s['seconds']} s)" for name, s in results["stages"].items()]
    lines.append(f"tests: {results['test_counts']}")
    for letter, check in results["checks"].items():
        lines.append(f"check ({letter}) {check['test']}: {check['outcome']}")
    for name, outcome in results["tests"].items():
        if outcome["outcome"] in ("failed", "error"):
            lines.append(f"  {outcome['outcome']}: {name}: {outcome.get('message', '')[:300]}")
    for name, record in results["goals"].items():
        value = "not measured" if record["value"] is None else f"{record['value']:.3f}"
        verdict = {True: "met", False: "NOT met", None: "not judged"}[record["met"]]
        lines.append(f"goal {name}: {value} (target {record['target']}): {verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--wall-s", type=float)
    parser.add_argument("--tests-file", type=Path, help="the checks' source: each check gets an outcome")
    args = parser.parse_args()
    results = summarise(args.work, args.dry_run, args.wall_s, args.tests_file)
    write_json_atomic(args.out / RESULTS_FILE, results)
    print(report(results))


if __name__ == "__main__":
    main()
