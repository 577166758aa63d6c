"""Data: datasets prepared by their builders, found and opened (``datasets.open_dataset``),
decoded, cut into clips and batched in a process-independent order."""
