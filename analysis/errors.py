"""The one exception the analysis raises for bad input."""


class AnalysisError(Exception):
    """Bad input: the message names the file or column at fault and is shown as one line."""
