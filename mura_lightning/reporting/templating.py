"""The Jinja2 environment of the report's templates (mura_lightning/reporting/templates/)."""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mura_lightning.evaluation.tables import number_text


@cache
def environment() -> Environment:
    """Templates from the package, HTML ones autoescaped; an undefined name is an error, not an empty string."""
    env = Environment(
        loader=PackageLoader("mura_lightning.reporting", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["number"] = number_text
    return env
