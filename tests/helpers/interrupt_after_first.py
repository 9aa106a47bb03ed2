"""A pytest plugin for the fault tests: Ctrl-C (KeyboardInterrupt) right after the first test finishes."""


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        raise KeyboardInterrupt
