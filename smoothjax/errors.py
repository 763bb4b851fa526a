"""Errors that mean "the input is wrong", as opposed to a bug."""


class InputError(ValueError):
  """A problem with user input: bad settings, data, files or shapes.

  The message is one line that says what is wrong and how to fix it. The
  programs print it without a traceback and exit with a non-zero status.
  """


def one_line(error: BaseException, limit: int = 200, *, drop_from: str | None = None) -> str:
  """``Type: first line of its message``, to quote an underlying error inside an InputError.

  Args:
    error: the exception to describe.
    limit: the most characters to return; a longer text is cut and ends in ``...``.
    drop_from: where a first line's useless tail starts (a dump of a library's
      internals); that text and what follows it are dropped.

  Returns:
    The type's name, then the message's first line if it has one.
  """
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  if drop_from is not None:
    text = text.split(drop_from)[0]
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[: limit - 3] + "..."
