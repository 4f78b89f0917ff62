"""The launcher's one error type: a one-line message that says what is wrong and what to do."""


class LaunchError(Exception):
    """Printed as ``sluice: <message>`` with exit status 1, never as a traceback."""
