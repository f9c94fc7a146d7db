"""Tools for tests, the demo and benchmarks: synthetic frames and a local archive server.

:mod:`pipekit.testing.simulate` writes LCO-like frames with a known truth;
:mod:`pipekit.testing.archive_server` serves a folder of frames on 127.0.0.1 with the
LCO science archive's API, faults included. Neither is imported by the library itself.
"""
