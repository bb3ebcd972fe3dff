"""Data stages of the pipeline. Names load lazily, so the conversion side runs without torch."""

_LAZY = {
    "RT1Dataset": "rt1.data.dataset",
    "DatasetError": "rt1.data.dataset",
    "PreprocessedFile": "rt1.data.preprocessed_schema",
    "read_episodes": "rt1.data.preprocessed_schema",
    "index_episodes": "rt1.data.index",
    "read_index": "rt1.data.index",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rt1.data' has no attribute {name!r}")
