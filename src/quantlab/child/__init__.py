"""Layer 3: the strategy child: runner, ctx and the strategy-file loader."""
