"""`hydra_app`, the `hydra.main` of every entry point: before Hydra starts the job (and makes its folder), the
command line's overrides are composed once, and one Hydra cannot apply is told in a line naming it, the close
matches and the options (exit code 2), instead of Hydra's advice to append it with `+` or a list of search paths.
Once the job runs, one failure contract holds for every entry point (`run_as_job`)."""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mura_lightning.cluster.slurm_env import secondary_rank_overrides
from mura_lightning.errors import USER_ERROR_EXIT_CODE, MuraError
from mura_lightning.io import ERROR_FILE, write_text_atomic

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
VERSION_BASE = "1.3"
MAX_SUGGESTIONS = 3

ReturnT = TypeVar("ReturnT")
ConfigCheck = Callable[[DictConfig], None]


class OverrideError(MuraError):
    """A command-line override that names a key or a config option the configuration does not have."""


def hydra_app(config_name: str, check: ConfigCheck | None = None) -> Callable[[Callable[..., ReturnT]], Callable]:
    """`hydra.main` for `conf/<config_name>.yaml`, whose command line is checked first (`check_command_line`):
    a misspelt key or option, or what `check` (given the composed config, say a missing checkpoint) raises as a
    MuraError, ends the program with the message and exit code 2, before Hydra makes the run folder. The job
    itself runs under `run_as_job`'s failure contract. A task of rank > 0 that srun started leaves the run
    folder's files to rank 0 (`secondary_rank_overrides`)."""

    def decorate(task: Callable[..., ReturnT]) -> Callable:
        hydra_main = hydra.main(version_base=VERSION_BASE, config_path=str(CONFIG_DIR), config_name=config_name)
        run_hydra = hydra_main(run_as_job(task, config_name))

        @functools.wraps(task)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            if cfg_passthrough is not None:  # called with a composed config, as hydra.main allows: no command line
                return run_hydra(cfg_passthrough)
            sys.argv.extend(secondary_rank_overrides(config_name))
            try:
                check_command_line(config_name, sys.argv[1:], check)
            except MuraError as err:
                sys.stderr.write(f"error: {err}\n")
                raise SystemExit(USER_ERROR_EXIT_CODE) from None
            return run_hydra()

        return main

    return decorate


def run_as_job(task: Callable[[DictConfig], ReturnT], name: str) -> Callable[[DictConfig], ReturnT]:
    """The failure contract of every entry point's job (`name`: its command): a job that raises leaves its
    traceback in `error.txt` in its output folder (written atomically by rank 0 alone; `job_folder`,
    `is_rank_zero`), then a MuraError is one `error: ...` line and any other error its traceback, in the job's log.
    A single run then ends with exit code 2 (a MuraError) or 1; in a multirun the error goes on to Hydra, which
    marks the job failed, runs the other jobs and fails the sweep."""

    @functools.wraps(task)
    def job(cfg: DictConfig) -> ReturnT:
        try:
            return task(cfg)
        except Exception as err:
            folder = job_folder(cfg)
            if folder is not None and is_rank_zero():
                write_text_atomic(folder / ERROR_FILE, "".join(traceback.format_exception(err)))
            user_error = isinstance(err, MuraError)
            if user_error:
                log.error("error: %s", err)
            else:
                log.exception("%s failed", name)
            if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
            raise SystemExit(USER_ERROR_EXIT_CODE if user_error else 1) from err

    return job


def is_rank_zero() -> bool:
    """Whether this process owns its run folder's files: it runs alone, or it is global rank 0 of a distributed run,
    as Lightning counts ranks (from the launch's variables, then the strategy's global rank). A rank > 0 shares rank
    0's folder; when it fails, even only as the run ends (a peer that has exited closes its connection), its
    traceback goes to its own log, and error.txt stays rank 0's account of the run."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only  # here: start-up of every command skips it

    return rank_zero_only.rank == 0


def job_folder(cfg: DictConfig) -> Path | None:
    """Where a failed job leaves error.txt: its output folder (`paths.output_dir`, else Hydra's), or None where
    that is the folder the command was started from (predict, export...: they write where they are told) or no
    Hydra job runs."""
    if not HydraConfig.initialized():
        return None
    runtime = HydraConfig.get().runtime
    try:
        folder = OmegaConf.select(cfg, "paths.output_dir", default=None)
    except OmegaConfBaseException:
        folder = None
    folder = Path(folder or runtime.output_dir).expanduser().resolve()
    return None if folder == Path(runtime.cwd).resolve() else folder


def check_command_line(config_name: str, argv: list[str], check: ConfigCheck | None = None) -> None:
    """Compose `config_name` with the overrides of `argv` (each option of a sweep once) and raise an OverrideError
    for a key or option it does not have, then run `check` on each composed config. Anything else Hydra would
    refuse is left for Hydra to report; command lines that change the config's source or ask for help are not
    checked."""
    args = _hydra_arguments(argv)
    if args is None or args.help or args.hydra_help or args.info or args.shell_completion:
        return
    if args.config_path or args.config_dir or args.experimental_rerun:
        return
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
        for overrides in _override_samples(args.overrides):
            cfg = _compose(args.config_name or config_name, overrides)
            if cfg is not None and check is not None:
                with contextlib.suppress(OmegaConfBaseException):  # a value missing or to resolve in the job
                    check(cfg)


def _hydra_arguments(argv: list[str]) -> Any:
    """Hydra's own parse of the command line (its parser, which hydra.main uses too), or None where it would
    refuse it (Hydra then says why)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return get_args_parser().parse_args(argv)
        except SystemExit:
            return None


def _override_samples(overrides: list[str]) -> Iterator[list[str]]:
    """The override lists to compose so that every option a sweep over a config group names is composed once:
    the first value of each override, then each further option of a group sweep with the others' first values (a
    sweep over a key, `seed=range(100)`, fails or passes on its key alone: its first value stands for all).
    Overrides Hydra cannot parse, and sweeps that cannot be listed (intervals), are left out."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return
    loader = GlobalHydra.instance().config_loader()
    choices = [
        values if loader.get_group_options(override.key_or_group) else values[:1]
        for override, values in ((override, _values(override)) for override in parsed)
    ]
    choices = [values for values in choices if values]
    base = [values[0] for values in choices]
    yield base
    for position, values in enumerate(choices):
        for value in values[1:]:
            yield [*base[:position], value, *base[position + 1 :]]


def _values(override: Override) -> list[str]:
    """`key=value` for each value an override stands for (one unless it is a sweep)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [f"{key}={override.get_value_element_as_str()}"]
    if not override.is_discrete_sweep():
        return []
    try:
        return [f"{key}={value}" for value in override.sweep_string_iterator()]
    except HydraException:
        return []


def _compose(config_name: str, overrides: list[str]) -> DictConfig | None:
    """The composed config; None when Hydra refuses it for a reason other than an unknown key or option."""
    try:
        return compose(config_name, overrides=overrides)
    except MissingConfigException as err:
        error = _unknown_option(err, overrides)
    except ConfigCompositionException as err:
        unknown = isinstance(err.__cause__, (ConfigKeyError, ConfigAttributeError))  # struct mode raises either
        error = _unknown_key(err, config_name, overrides) if unknown else None
    except (HydraException, OmegaConfBaseException):
        error = None
    if error is not None:
        raise error
    return None


def _unknown_option(err: MissingConfigException, overrides: list[str]) -> OverrideError | None:
    """`bodypart=[hand,wirst]`: the option of a config group that does not exist, with the group's options."""
    group, _, option = (err.missing_cfg_file or "").rpartition("/")
    options = GlobalHydra.instance().config_loader().get_group_options(group) if group else []
    if not options:
        return None
    given = next((line for line in overrides if _key_of(line) == group), group)
    return OverrideError(
        f"{given}: {group} has no option {option!r}; its options are {', '.join(options)}"
        f"{_did_you_mean(option, options)}"
    )


def _unknown_key(err: ConfigCompositionException, config_name: str, overrides: list[str]) -> OverrideError:
    """`trainer.max_epoch=1`: a key the config does not have, with the close matches among its siblings."""
    full_key = str(err.__cause__.full_key)  # the first part missing: `traner` of traner.max_epochs=1
    given = next((line for line in overrides if f"{_key_of(line)}.".startswith(f"{full_key}.")), full_key)
    others = [line for line in overrides if line != given]
    try:
        tree = OmegaConf.to_container(compose(config_name, overrides=others), resolve=False)
    except (HydraException, OmegaConfBaseException):
        tree = {}
    parents, missing = _deepest_known(tree, _key_of(given).split("."))
    siblings = [str(key) for key in _node(tree, parents)]
    where = ".".join(parents) or "the configuration"
    hint = _did_you_mean(missing[0], siblings, ".".join(parents), missing[1:]) or (
        f"; its keys are {', '.join(siblings)}" if siblings else ""
    )
    return OverrideError(
        f"{given}: {where} has no key {missing[0]!r}{hint} (+{given.lstrip('+')} adds it as a new key)"
    )


def _key_of(line: str) -> str:
    """The key of an override line (`+a.b=1` -> `a.b`)."""
    return line.lstrip("+~").split("=")[0].split("@")[0]


def _deepest_known(tree: dict, parts: list[str]) -> tuple[list[str], list[str]]:
    """`parts` split into the longest prefix that exists in `tree` and the rest (at least one part)."""
    node, known = tree, []
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            break
        node, known = node[part], [*known, part]
    return known, parts[len(known) :]


def _node(tree: dict, parts: list[str]) -> dict:
    """The mapping at `parts` in `tree` (empty when it is not a mapping)."""
    for part in parts:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree if isinstance(tree, dict) else {}


def _did_you_mean(name: str, candidates: list[str], prefix: str = "", suffix: Sequence[str] = ()) -> str:
    """`; did you mean a.b?` for the candidates close to `name`, written as full keys; "" when none is."""
    close = difflib.get_close_matches(name, candidates, n=MAX_SUGGESTIONS)
    full = [".".join(part for part in (prefix, match, *suffix) if part) for match in close]
    return f"; did you mean {' or '.join(full)}?" if full else ""
