"""The benchmark harness of issue 5 (not part of the test suite). Entry point: `python -m bench.run`."""
