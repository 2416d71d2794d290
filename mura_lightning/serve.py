"""`python -m mura_lightning.serve ckpt_path=FILE [serve.port=8000] [serve.host=127.0.0.1] [serve.api_keys_file=F]`:
the model as an HTTP service (FastAPI on uvicorn) with its viewer page at `/`: `POST /v1/studies` takes one study's
images (multipart, the field `files` repeated) and answers its probability, decision, each view's probability and
weight and, with `cam=true`, CAM overlays, from the same inference core as predict. Settings: conf/serve.yaml."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mura_lightning.cli import hydra_app
from mura_lightning.inference.checkpoints import check_checkpoints
from mura_lightning.inference.model import InferenceModel
from mura_lightning.predict import load_model
from mura_lightning.reporting.source import file_digest
from mura_lightning.serving.settings import ServeSettings

log = logging.getLogger(__name__)


def check_serve(cfg: DictConfig) -> None:
    """Refuse a missing checkpoint, or settings that would expose the model without keys, before anything loads."""
    ServeSettings.from_config(cfg.serve)
    check_checkpoints(cfg)


def model_info(model: InferenceModel) -> dict[str, Any]:
    """What every answer says about the model: its name, checkpoints (file names and SHA-256), pooling,
    preprocessing, test-time augmentation and thresholds."""
    described = model.describe()
    return {
        "name": described["model"],
        "checkpoints": [Path(source).name for source in model.sources],
        "checkpoint_sha256": [file_digest(source) for source in model.sources],
        "pooling": described["pooling"],
        "preprocessing": described["preprocessing"],
        "tta": described["tta"],
        "threshold": described["threshold"],
        "thresholds": described["thresholds"],
    }


def serve(cfg: DictConfig) -> None:
    """Load the model and answer requests until SIGTERM or Ctrl-C (requests in flight are answered first)."""
    import uvicorn

    from mura_lightning.serving.app import create_app

    settings = ServeSettings.from_config(cfg.serve)
    model = load_model(cfg)
    app = create_app(
        model,
        settings,
        model_info=model_info(model),
        cam_method=cfg.cam_method,
        cam_image_weight=cfg.cam_image_weight,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # Hydra's logging (stderr) stays in charge
        access_log=False,  # the app writes one structured line per request
        server_header=False,
        timeout_keep_alive=settings.limits.keep_alive_s,
        h11_max_incomplete_event_size=settings.limits.max_header_bytes,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )


@hydra_app("serve", check=check_serve)
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    serve(cfg)


if __name__ == "__main__":
    main()
