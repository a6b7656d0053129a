"""Issue 12: a strategy child holds only what it uses, with the real director, worker and zygote."""

from __future__ import annotations

from tests.conftest import Lab, wait_for

#: Reports in ctx.state whether its logger exists yet; prints at tick 2 and logs at tick 3.
LOGS_LATE = '''
import logging
def made(ctx):
    return f"strategy.{ctx.id}" in logging.Logger.manager.loggerDict
def st_init(ctx):
    ctx.state["logger_at_init"] = made(ctx)
def st_heartbeat(ctx, tick):
    if tick.seq == 2:
        print("printed at 2")
        ctx.state["logger_after_print"] = made(ctx)
    if tick.seq == 3:
        ctx.log.info("logged at 3")
        ctx.state["logger_after_log"] = made(ctx)
def st_exit(ctx, reason):
    pass
'''


def test_the_strategy_log_is_made_by_its_first_line_and_gets_every_line(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("late", LOGS_LATE), "--interval", "0.05")
    state = wait_for(lambda: "logger_after_log" in (s := lab.state("late")) and s, what="the third tick's state")
    assert state == {"logger_at_init": False, "logger_after_print": False, "logger_after_log": True}
    log = wait_for(lambda: "logged at 3" in (text := lab.log("late")) and text, what="the logged line")
    assert log.index("printed at 2") < log.index("logged at 3")
