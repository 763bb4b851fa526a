"""Errors that mean "the input is wrong", as opposed to a bug."""


class InputError(ValueError):
  """A problem with user input: bad settings, data, files or shapes.

  The message is one line that says what is wrong and how to fix it. The
  programs print it without a traceback and exit with a non-zero status.
  """
