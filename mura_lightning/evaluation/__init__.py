"""Scoring predictions: image and study metrics (`metrics`), decision thresholds (`thresholds`), temperature
scaling (`calibration`), patient-clustered bootstrap intervals (`bootstrap`), DeLong's test for two correlated
AUROCs (`delong`), repeat groups of a sweep (`repeats`), the terminal table (`tables`) and the files a test writes
(`outputs`)."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "metrics": ["PredictionTable", "StageMetrics", "metrics_by_body_part"],
        "bootstrap": ["BootstrapSettings", "intervals", "paired_intervals"],
        "delong": ["DeLongResult", "delong_test"],
        "calibration": ["fit_temperature", "reliability_figure"],
        "thresholds": ["MetricSettings", "threshold_in_force", "tune_threshold"],
        "outputs": ["read_study_predictions", "write_scored_test", "write_submission"],
        "repeats": ["repeat_groups", "repeat_tables"],
        "tables": ["markdown_table", "print_metrics_table", "rich_table"],
    },
)
