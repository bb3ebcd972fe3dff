"""Google's RT-1 network (FiLM-EfficientNet + TokenLearner + decoder over image and action tokens).

See `rt1.model.google.network` for the data flow, `checkpoint_layout` for Google's checkpoint keys.
"""

from rt1.model.google.network import GoogleRT1, preprocess

__all__ = ["GoogleRT1", "preprocess"]
