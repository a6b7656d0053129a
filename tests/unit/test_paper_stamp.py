"""The paper account names, on each order it accepts, the strategy and epoch whose guarded write placed it."""

from __future__ import annotations

from pathlib import Path

from quantlab.exchange.accounts import default_paper_account
from quantlab.exchange.paper import BLOB_KIND, Guard, PaperExchange, _decode_state
from quantlab.store.filestore import FileStore

ORDER = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001",
         "price": "1000", "timeInForce": "IOC"}


def test_an_accepted_order_carries_the_strategy_and_epoch_of_its_commit(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    paper = PaperExchange(default_paper_account(), store)
    assert paper.call("place_order", {**ORDER, "orderLinkId": "a-1"}, Guard("s1", 7, lambda: None))["retCode"] == 0
    assert paper.call("place_order", {**ORDER, "orderLinkId": "w-1"}, Guard("", 0, lambda: None))["retCode"] == 0
    assert paper.call("place_order", {**ORDER, "orderLinkId": "u-1"})["retCode"] == 0
    refused = paper.call("place_order", {**ORDER, "orderLinkId": "a-1"}, Guard("s2", 9, lambda: None))
    assert refused["retCode"] == 110072
    raw = store.get_blob(BLOB_KIND, paper.account.name)
    assert raw is not None
    orders = {o.link_id: (o.strategy, o.epoch) for o in _decode_state(raw).closed}
    assert orders == {"a-1": ("s1", 7), "w-1": ("", None), "u-1": ("", None)}
