"""What a search leaves in its study folder: the best parameters as an override line, the trials table, and
Optuna's optimisation history and parameter importance plots."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from mura_lightning.io import write_atomically, write_text_atomic  # noqa: E402
from mura_lightning.search.space import Param, overrides  # noqa: E402
from mura_lightning.search.storage import HEARTBEAT_ATTR  # noqa: E402

log = logging.getLogger(__name__)

BEST_OVERRIDES_FILE = "best_overrides.txt"
TRIALS_FILE = "trials.csv"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
MIN_TRIALS_FOR_IMPORTANCE = 2
PLOT_DPI = 120


def best_override_line(study: optuna.Study, space: list[Param]) -> str:
    """The best trial's parameters as one override line, ready to append to a train command."""
    params = study.best_trial.params
    known = overrides(space, params)
    unknown = [f"{name}={value}" for name, value in params.items() if name not in {param.name for param in space}]
    return " ".join([*known, *unknown])


def save_plot(axes: Any, path: Path) -> Path:
    """Save the figure of matplotlib axes as a PNG, atomically, and close it."""
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=PLOT_DPI))
    plt.close(figure)
    return path


def write_report(study: optuna.Study, study_dir: Path, space: list[Param]) -> list[str]:
    """Write the trials table and, when trials completed, the best override line and the plots; the lines
    that tell the user what was written and what was not."""
    lines = []
    frame = study.trials_dataframe()
    frame = frame.drop(columns=[f"system_attrs_{HEARTBEAT_ATTR}"], errors="ignore")  # when a trial last beat
    write_atomically(study_dir / TRIALS_FILE, lambda tmp: frame.to_csv(tmp, index=False))
    lines.append(f"trials table: {study_dir / TRIALS_FILE}")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        lines.append(f"no trial completed: no best parameters, no plots (see error.txt and pruned.txt in {study_dir})")
        return lines
    line = best_override_line(study, space)
    write_text_atomic(study_dir / BEST_OVERRIDES_FILE, line + "\n")
    lines.append(f"best value: {study.best_value:.4f} (trial {study.best_trial.number})")
    lines.append(f"best overrides ({study_dir / BEST_OVERRIDES_FILE}): {line}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        save_plot(optuna.visualization.matplotlib.plot_optimization_history(study), study_dir / HISTORY_PLOT)
        lines.append(f"optimisation history: {study_dir / HISTORY_PLOT}")
        if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
            lines.append(f"no parameter importances: they need {MIN_TRIALS_FOR_IMPORTANCE} completed trials, not 1")
        else:
            save_plot(optuna.visualization.matplotlib.plot_param_importances(study), study_dir / IMPORTANCE_PLOT)
            lines.append(f"parameter importances: {study_dir / IMPORTANCE_PLOT}")
    return lines
