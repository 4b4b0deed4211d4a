"""noduleflow trainer: data sources (phantoms, LUNA16, LIDC-IDRI), models, training.

Importing ``trainer`` does not import torch; the submodules that need it do.
"""
