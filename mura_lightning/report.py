"""`python -m mura_lightning.report DIR [reporting.gallery.per_group=6]`: report.html (and MODEL_CARD.md) for a
training run, an evaluate output or a compare output, written into that folder."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from mura_lightning.cli import hydra_app
from mura_lightning.errors import MuraError
from mura_lightning.reporting.build import ReportSettings
from mura_lightning.reporting.write import write_report

USAGE = "python -m mura_lightning.report DIR (a training run, an evaluate output or a compare output)"


def report(cfg: DictConfig) -> list:
    """Write the report of `cfg.dir` with the `reporting` settings; the files written."""
    if OmegaConf.is_missing(cfg, "dir"):
        raise MuraError(f"give the folder to report on: {USAGE}")
    paths = write_report(cfg.dir, ReportSettings.from_config(cfg.reporting))
    for path in paths:
        print(path)
    return paths


def folder_argument(argv: list[str]) -> list[str]:
    """The command line with a leading folder given without `dir=` (`report DIR`) turned into `dir=DIR`."""
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        return [f"dir={argv[0]}", *argv[1:]]
    return argv


@hydra_app("report")
def app(cfg: DictConfig) -> None:
    """Hydra entry point."""
    report(cfg)


def main() -> None:
    """`python -m mura_lightning.report DIR [overrides]`."""
    sys.argv[1:] = folder_argument(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
