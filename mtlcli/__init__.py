"""mtl: one model that detects objects and segments the scene — prepare, train, eval, viz, benchmark."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from mtlcli import load_model` without importing torch for `mtl --help`
    if name in ("load_model", "Predictor", "Result"):
        from mtlcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'mtlcli' has no attribute {name!r}")
