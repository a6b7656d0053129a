"""The director process: one leader per store places Work on live workers."""
