"""pybit's request methods, read from the installed pybit: the source of quantlab/exchange/methods.py.

The strategy child must not import pybit (it would load requests, pybit and
their threads' worth of modules into every strategy process), so the names
are written once into a static module by

    python -m quantlab.exchange.pybit_methods > src/quantlab/exchange/methods.py

and tests/unit/test_methods.py fails when the installed pybit offers another set.
"""

from __future__ import annotations

from pybit._http_manager import _V5HTTPManager
from pybit.unified_trading import HTTP


def request_methods() -> frozenset[str]:
    """pybit's endpoint methods: what the endpoint mixins add to the client, not its own helpers."""
    helpers = set(dir(_V5HTTPManager))  # prepare_payload and the like: they build, they do not send
    return frozenset(
        name for name in dir(HTTP) if not name.startswith("_") and name not in helpers and callable(getattr(HTTP, name))
    )


def render(methods: frozenset[str]) -> str:
    """The text of quantlab/exchange/methods.py."""
    import pybit

    lines = [
        '"""The public request methods of pybit\'s ``unified_trading.HTTP``: what ``ctx.api`` may call.',
        "",
        f"Generated from pybit {getattr(pybit, 'VERSION', '?')} by ``python -m quantlab.exchange.pybit_methods``;",
        "do not edit (tests/unit/test_methods.py checks it against the installed pybit). A static",
        "literal so that a strategy child knows the names without importing pybit.",
        '"""',
        "",
        "PUBLIC_METHODS: frozenset[str] = frozenset({",
        *(f'    "{name}",' for name in sorted(methods)),
        "})",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(request_methods()), end="")
