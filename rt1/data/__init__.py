"""The data stages: RLDS reading (rlds_reader), stage 1 (convert, segment_schema), stage 2 (preprocess,
preprocessed_schema, preprocessed_file, images), stage 3 (index) and the training loader (dataset). Only `dataset` imports
torch, so the conversion side runs without it; import from the modules.
"""
