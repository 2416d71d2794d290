"""The model service: the FastAPI app over the one inference core (`app`), its micro-batching of studies across
requests (`batching`), uploads decoded in memory under limits (`uploads`), API keys and settings (`security`,
`settings`), Prometheus metrics (`metrics`) and the viewer page (`static/`)."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "app": ["create_app"],
        "settings": ["ServeSettings"],
    },
)
