"""Layer 1, the workerpool: records, stores, placement and the director."""
