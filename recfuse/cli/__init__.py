"""The ``recfuse`` command line: parse → config → call → exit code."""
