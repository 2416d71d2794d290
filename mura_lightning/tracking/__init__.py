"""Experiment tracking beyond TensorBoard: MLflow (`logger=mlflow`, `logger=many`)."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {"mlflow_run": ["MLflowRunLogger", "check_tracking", "check_tracking_uri", "log_run_outputs"]},
)
