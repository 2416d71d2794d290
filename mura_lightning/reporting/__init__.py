"""The shareable run report: one self-contained report.html per training run, evaluate output or comparison
(headline with intervals, body-part table, data counts, figures, error gallery with CAMs, model card), and
MODEL_CARD.md; the templates are in templates/."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "write": ["write_report"],
        "build": ["ReportSettings", "write_run_report"],
        "comparison": ["write_comparison_report"],
        "gallery": ["GallerySettings", "pick_studies"],
        "model_card": ["card_facts", "model_card_markdown"],
        "source": ["ScoredRun", "read_scored_run"],
    },
)
