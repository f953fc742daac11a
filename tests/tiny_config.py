"""The tests' tiny config as a config file: --config=tests/tiny_config.py:CORPUS_DIR"""

from tests.helpers import tiny_cd


def get_config(arg=None):
  return tiny_cd(arg or None)
