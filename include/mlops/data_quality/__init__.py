"""Data quality of landed batches: the expectation suite (YAML -> GX) and batch validation.

Import the submodules (suite, validate) inside tasks: they pull in Great Expectations and pandas.
"""
