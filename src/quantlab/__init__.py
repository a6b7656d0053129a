"""quantlab: a runtime for live trading strategies."""

from quantlab.errors import (
    ApiError,
    ApiHaltedError,
    ApiNetworkError,
    ApiPermissionError,
    ApiRiskError,
    OverBudget,
    QuantlabError,
)

#: Every setting's environment variable starts with it: QLAB_HOME, QLAB_WORKER_START_REGION...
ENV_PREFIX = "QLAB"

__all__ = ["ENV_PREFIX", "ApiError", "ApiHaltedError", "ApiNetworkError", "ApiPermissionError", "ApiRiskError",
           "OverBudget", "QuantlabError"]
