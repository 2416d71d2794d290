"""Lightning callbacks: metric figures and tables, CAM heatmaps, TensorBoard's layout, progress for terminals and log
files, the model's table."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cam": ["CAMCallback"],
        "layout": ["TensorBoardLayout", "custom_scalars_layout", "figure_tag"],
        "metrics": ["MetricsReport"],
        "progress": ["LogProgressBar", "progress_bar"],
        "summary": ["ModelTable"],
    },
)
