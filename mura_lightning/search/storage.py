"""Where a study lives and how its workers' trials are watched: SQLite in the study folder for one worker, Optuna's
journal file there for several, or a storage the user names; each with Optuna's heartbeat, so the trial of a
worker that died is failed (and retried, by the callback given) once it has been silent for the grace period."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mura_lightning.errors import MuraError
from mura_lightning.io import write_text_atomic

STUDY_DB = "optuna.db"  # one worker's study, in the study folder
STUDY_JOURNAL = "optuna.journal"  # several workers' study, in the study folder
STORAGE_RECORD = "storage.txt"  # in the study folder: the storage given when the study was made elsewhere
HEARTBEAT_ATTR = "mura:heartbeat"  # a journal trial's system attribute: [its trial id, the time of its last beat]
NEW_SEARCH = "hparams_search.study_name=NAME"  # how to start another search in the same command
URL_MARK = "://"  # a database URL (sqlite:///..., postgresql://...); anything else names a journal file
STUDY_POLL_S = 2  # the longest a waiting worker leaves the study unread (a read of the journal or one query)

StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class Heartbeat:
    """How running trials are watched: a beat every `interval` seconds, lost after `grace_period` seconds of
    silence, then retried `retries` times at most."""

    interval: int
    grace_period: int
    retries: int

    @property
    def poll_s(self) -> int:
        """How often a worker with nothing to run looks at the study again: a trial finished elsewhere frees it
        within this, a lost one is found within this after its grace period."""
        return min(self.interval, STUDY_POLL_S)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with Optuna's heartbeat interface, which its RDB storage has and its journal storage
    (Optuna 5.0) lacks (optuna/optuna#6615): a running trial's beat is a system attribute holding its trial id
    and the time, so Optuna's own heartbeat thread, `fail_stale_trials` and `RetryHeartbeatStaleTrialCallback`
    work on it unchanged. A retried trial inherits its predecessor's attributes: a beat of another trial id is
    none, as a trial that never beat is never stale in the RDB storage either."""

    def __init__(self, backend: JournalFileBackend, heartbeat: Heartbeat, callback: StaleTrialCallback) -> None:
        super().__init__(backend)
        self._heartbeat, self._stale_trial_callback = heartbeat, callback

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that the trial's worker is alive now (nothing when another worker already failed the trial)."""
        with contextlib.suppress(UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, [trial_id, time.time()])

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat and beat[0] == trial._trial_id and now - beat[1] > self._heartbeat.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        """Seconds between a running trial's beats."""
        return self._heartbeat.interval

    def get_heartbeat_stale_trial_callback(self) -> StaleTrialCallback:
        """What is done with a trial failed for its silence."""
        return self._stale_trial_callback


def is_url(storage: str) -> bool:
    """Whether a storage is a database URL rather than a journal file's path."""
    return URL_MARK in storage


def shown(storage: str) -> str:
    """A storage as messages and the study folder show it: a URL without its password."""
    if not is_url(storage):
        return storage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:
        return storage


def is_sqlite(storage: str) -> bool:
    """Whether a storage is an SQLite database, which one process at a time may write."""
    return storage.startswith("sqlite")


def same_place(storage: str, path: Path) -> bool:
    """Whether a given storage names the study folder's own file `path` (as a journal path or an SQLite URL)."""
    local = path.resolve()
    if is_url(storage):
        return is_sqlite(storage) and Path(storage.split(URL_MARK, 1)[1].removeprefix("/")).resolve() == local
    return Path(storage).resolve() == local


def storage_location(given: str | None, study_dir: Path, n_workers: int) -> str:
    """The storage of the search in `study_dir`: `given` (hparams_search.storage), else the study folder's
    SQLite database for one worker and journal file for several. A study made in one of them is never forked
    into another: a storage that would start a second copy is refused, saying how to resume the first."""
    files = [path for path in (study_dir / STUDY_DB, study_dir / STUDY_JOURNAL) if path.exists()]
    record = study_dir / STORAGE_RECORD
    recorded = record.read_text().strip() if record.is_file() else None
    if given:
        if files and not same_place(given, files[0]):
            raise MuraError(
                f"hparams_search.storage={shown(given)}: this search's study is already in {files[0]}; resume it "
                f"without hparams_search.storage, or give the new storage to a new search ({NEW_SEARCH})"
            )
        if recorded and recorded != shown(given):
            raise MuraError(
                f"hparams_search.storage={shown(given)}: this search's study was made in {recorded} (see {record}); "
                f"resume it with that storage, or give the new one to a new search ({NEW_SEARCH})"
            )
        if is_sqlite(given) and n_workers > 1:
            raise MuraError(
                f"hparams_search.storage={shown(given)} with hparams_search.n_workers={n_workers}: several workers "
                "cannot share an SQLite database; leave hparams_search.storage unset (they share the journal file "
                f"{study_dir / STUDY_JOURNAL}), or give a database server's URL (postgresql://..., mysql://...)"
            )
        return given
    if recorded:
        raise MuraError(
            f"this search's study was made in {recorded} (see {record}): resume it with "
            f"hparams_search.storage=<that storage> (with its password), or start a new search ({NEW_SEARCH})"
        )
    if len(files) > 1:
        raise MuraError(
            f"{study_dir} holds two copies of this search's study, {files[0].name} and {files[1].name}: move the one "
            "not to resume out of the folder, or pass it as hparams_search.storage"
        )
    if files and files[0].name == STUDY_DB and n_workers > 1:
        raise MuraError(
            f"hparams_search.n_workers={n_workers}: this search's study is in the SQLite database {files[0]} (made "
            "with one worker), which several workers cannot share; resume it with hparams_search.n_workers=1, or "
            f"start a new search for several workers ({NEW_SEARCH})"
        )
    if (files and files[0].name == STUDY_JOURNAL) or n_workers > 1:
        return str(study_dir / STUDY_JOURNAL)
    return f"sqlite:///{study_dir / STUDY_DB}"


def open_storage(location: str, heartbeat: Heartbeat, callback: StaleTrialCallback, given: bool) -> BaseStorage:
    """The Optuna storage at `location` (a database URL or a journal file) with the heartbeat on; a storage that
    cannot be opened (a server that does not answer, a missing driver or folder) is a MuraError saying what to do."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            if is_url(location):
                return RDBStorage(
                    location,
                    heartbeat_interval=heartbeat.interval,
                    grace_period=heartbeat.grace_period,
                    heartbeat_stale_trial_callback=callback,
                )
            return HeartbeatJournalStorage(JournalFileBackend(location), heartbeat, callback)
    except Exception as err:  # each database driver has its own errors; all mean the same to the user
        reason = " ".join(str(err).split("(Background on this error")[0].split())
        where = f"hparams_search.storage={shown(location)}" if given else f"the study's storage {shown(location)}"
        fix = (
            "check the URL, that the server answers and its Python driver is installed, or leave "
            "hparams_search.storage unset to keep the study in the study folder"
            if given
            else "check that the study folder can be written"
        )
        raise MuraError(f"{where} cannot be opened ({type(err).__name__}: {reason}); {fix}") from err


def record_storage(study_dir: Path, given: str | None) -> None:
    """Note in the study folder where a study made in a given storage lives (without its password), so the same
    command without the storage is refused rather than starting a second study in the folder."""
    record = study_dir / STORAGE_RECORD
    if not given or record.exists() or any(same_place(given, study_dir / name) for name in (STUDY_DB, STUDY_JOURNAL)):
        return
    write_text_atomic(record, shown(given) + "\n")
