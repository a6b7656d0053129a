"""quantlab: a runtime for live trading strategies."""

from quantlab.errors import (
    ApiError,
    ApiHaltedError,
    ApiNetworkError,
    ApiPermissionError,
    ApiRiskError,
    QuantlabError,
)

__all__ = ["ApiError", "ApiHaltedError", "ApiNetworkError", "ApiPermissionError", "ApiRiskError", "QuantlabError"]
