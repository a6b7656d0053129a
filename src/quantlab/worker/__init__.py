"""Layer 2, the st-worker: lifecycle, strategy supervision, zygote, channel, API pool."""
