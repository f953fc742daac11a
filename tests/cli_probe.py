"""A CLI for tests/test_forked_cli.py: what a forked run must print as a real one does."""

import atexit
import logging
import os
import sys

MARK = 'set at import'


def _at_exit():
  print('at exit, __main__ has MARK:', hasattr(sys.modules['__main__'], 'MARK'))


if __name__ == '__main__':
  atexit.register(_at_exit)
  print('stdout line', sys.argv[1:], os.getcwd() == os.path.dirname(os.path.dirname(__file__)))
  print('error: a python stderr line', file=sys.stderr)
  os.write(2, b'a C-level stderr line\n')  # After the line above, as XLA's logs are.
  logging.warning('a logging warning')
  if 'bytes' in sys.argv:  # Text mode fails to decode it, as for a real process.
    print('non-UTF-8 bytes:', b'\xff'.decode('utf-8', 'surrogateescape'))
  codes = [a for a in sys.argv[1:] if a != 'bytes']
  sys.exit(int(codes[0]) if codes else None)
