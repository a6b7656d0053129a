"""Exchange access: accounts, the API pool, rate limits, method names, the paper exchange."""
