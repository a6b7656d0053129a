"""quantlab: a runtime for live trading strategies."""

from quantlab.errors import ApiError, ApiNetworkError, ApiPermissionError, QuantlabError

__all__ = ["ApiError", "ApiNetworkError", "ApiPermissionError", "QuantlabError"]
