"""noduleflow trainer: synthetic chest-CT phantoms, data sources, models, training.

Importing ``trainer`` does not import torch; the submodules that need it do.
"""
