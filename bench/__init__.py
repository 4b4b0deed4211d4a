"""noduleflow bench: accuracy (LUNA16 FROC/CPM) and throughput measurements."""
