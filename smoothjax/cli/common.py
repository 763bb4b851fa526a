"""What the programs share: one-line errors instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import logging

from smoothjax.errors import InputError


def run_main(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl ``main`` so an InputError prints one line and exits with status 2."""

  def wrapped(argv):
    # orbax and absl log every checkpoint operation at INFO; keep the console for progress.
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  return wrapped
