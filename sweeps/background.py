"""Work the driver does in a background thread while it goes on (starting Ray, running Tune)."""

from __future__ import annotations

import threading
from typing import Callable


class InBackground:
    """A value made in a background thread; ``result()`` waits for it and raises what making it
    raised, in the caller's thread."""

    def __init__(self, make: Callable[[], object], name: str | None = None):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._make, args=(make,), name=name, daemon=True)
        self._thread.start()

    def _make(self, make) -> None:
        try:
            self._value = make()
        except BaseException as error:  # raised again by result(), in the caller's thread
            self._error = error

    def done(self, timeout: float | None = 0.0) -> bool:
        """Whether it is made (waiting up to ``timeout`` seconds; None: until it is)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
