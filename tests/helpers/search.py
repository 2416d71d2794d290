"""What the search tests share: tiny trials of a small space, tune() in this process, and the study read back."""

from __future__ import annotations

from pathlib import Path

from helpers.runs import REPO_ROOT, compose, tiny_run_overrides

FAST = [  # one epoch of 3 batches, no test pass, no figures: a trial of a few seconds
    "test=false",
    "callbacks.cam=null",
    "callbacks.metrics_report=null",
]
LR_AND_LOSS = [  # a small space: lr, and focal's gamma only when the loss is focal
    "~hparams_search.params.weight_decay",
    "~hparams_search.params.rotation",
    "~hparams_search.params.batch_size",
]


def short_heartbeat(grace_s: int) -> list[str]:
    """A beat every second: a killed trial is taken as lost `grace_s` seconds after its last one."""
    return ["hparams_search.heartbeat_interval=1", f"hparams_search.grace_period={grace_s}"]


def run_tune(root: Path, out: Path, *extra: str):
    """tune() in this process on the tiny tree; the trial counts and the study folder."""
    from hydra import initialize_config_dir

    from mura_lightning.tune import tune

    cfg = compose("tune", [*tiny_run_overrides(root, out), *FAST, *extra])
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return tune(cfg), Path(cfg.study_dir)


def load_study(study_dir: Path):
    """The study in a study folder, from its SQLite database or its journal file."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from mura_lightning.search.storage import STUDY_DB, STUDY_JOURNAL

    journal = study_dir / STUDY_JOURNAL
    storage = (
        JournalStorage(JournalFileBackend(str(journal))) if journal.is_file() else f"sqlite:///{study_dir / STUDY_DB}"
    )
    return optuna.load_study(study_name=None, storage=storage)
