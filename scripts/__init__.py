"""Command-line tools of the project (run as `python scripts/<name>.py`); a package so tests can import the shared ones."""
