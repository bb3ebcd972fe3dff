"""Data stages of the pipeline. Torch-side names load lazily, so the conversion side runs without torch."""

_LAZY = {
    "RT1Dataset": "rt1.data.dataset",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rt1.data' has no attribute {name!r}")
