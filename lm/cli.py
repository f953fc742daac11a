"""What every command-line entry point shares: flag parsing that fails in one line.

`app.run(main, flags_parser=cli.parse_flags)`: a misspelt --config.* override
(ml_collections raises AttributeError/KeyError with a did-you-mean while absl
parses), a missing or broken config file, or any other flag error prints
`error: ...` on one line and exits with status 2, instead of a traceback.
"""

from __future__ import annotations

import os
import sys

from absl import flags


def _one_line(e: BaseException) -> str:
  text = str(e)
  if isinstance(e, (AttributeError, KeyError)):  # A repr'd message: 'name'\nDid you mean...
    text = text.strip('\'"').replace('\\n', ' ').replace("\\'", "'")
  if 'Traceback (most recent call last)' in text:  # ml_collections embeds get_config's.
    head = text.split('Traceback (most recent call last)')[0].strip()
    text = f'{head} {text.strip().splitlines()[-1]}'
  text = text.removeprefix('ERROR:: ')  # absl's flagfile errors say it twice.
  return ' '.join(text.split())


def define_config(help: str, default: str | None = None):
  """ml_collections' --config file flag. Defining it reads the command line's
  --flagfile files (a --config may be in one), so an unreadable flagfile is
  reported here, in one line (exit 2), not as a traceback from the import."""
  from ml_collections import config_flags
  try:
    return config_flags.DEFINE_config_file('config', default, help)
  except flags.Error as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
    sys.exit(2)


def config_file(flag: str = 'config'):
  """The --config file's ConfigDict as its get_config() returns it, before any
  --config.* override (a 'path:arg' passes arg, as ml_collections does)."""
  import importlib.util

  from ml_collections import config_flags
  path, _, arg = config_flags.get_config_filename(flags.FLAGS[flag]).partition(':')
  spec = importlib.util.spec_from_file_location('_lm_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*([arg] if arg else []))


def _override_names(argv: list[str]) -> list[str]:
  """The fields of the --config.* overrides on a command line, in order (up to
  a '--'): 'train.steps' for --config.train.steps=3."""
  out = []
  for a in argv[1:]:
    if a == '--':
      break
    if a.startswith('--config.'):
      out.append(a.split('=', 1)[0][len('--config.'):])
  return out


def _repeated_override(argv: list[str]) -> str | None:
  """The first --config.* override given twice: ml_collections appends a
  repeated tuple override to the first ('(0, 1)' then '(5,)' gives (0, 1, 5))
  instead of letting the last win, so a repeat is refused."""
  names = _override_names(argv)
  twice = [n for i, n in enumerate(names) if n in names[:i]]
  return f'--config.{twice[0]}' if twice else None


def _whole_section(argv: list[str]) -> str | None:
  """The first --config.<section>=... override: ml_collections would replace
  the whole section with it, so the config file's other fields of that
  section would silently fall back to their defaults."""
  from lm.config import SECTIONS
  return next((n for n in _override_names(argv) if n in (*SECTIONS, 'sweep')), None)


def _unparsed_tuple(argv: list[str]) -> str | None:
  """The first --config.* tuple override ml_collections kept as one string:
  '(pos, neg)' is not a Python literal, so the field became ('(pos, neg)',)."""
  for a in argv[1:]:
    if a == '--':
      break
    if not a.startswith('--config.') or '=' not in a:
      continue
    name, raw = a[len('--config.'):].split('=', 1)
    value = flags.FLAGS.config
    for part in name.split('.'):
      value = getattr(value, part, None)
    if (isinstance(value, tuple) and len(value) == 1 and value[0] == raw.strip()
        and raw.strip().startswith(('(', '['))):
      return (f'--config.{name}={raw} is not a Python tuple: quote each string, e.g. '
              f'--config.{name}="(\'a\', \'b\')"')
  return None


def _fields_of_unknown(argv: list[str]) -> str:
  """'; model fields: ...' for the first override naming no field of its
  section (what would be valid, where ml_collections has no close match)."""
  import dataclasses

  from lm.config import SECTIONS, SweepConfig
  tables = {**SECTIONS, 'sweep': SweepConfig}
  for name in _override_names(argv):
    section, _, field = name.partition('.')
    if section in tables:
      known = [f.name for f in dataclasses.fields(tables[section])]
      if field.split('.')[0] not in known:
        return f' (--config.{name}; {section} fields: {", ".join(known)})'
  return ''


def check_text(text: str, flag: str) -> str:
  """`text` as --flag gave it, or a one-line ValueError if it is not UTF-8:
  Python keeps a command line's undecodable bytes as lone surrogates, which no
  tokenizer encodes (the run then failed with a traceback)."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError as e:
    bad = text[e.start].encode('utf-8', 'surrogateescape')
    raise ValueError(f'--{flag}: not UTF-8 text (byte {bad!r} at character {e.start}); '
                     'give UTF-8 text') from None
  return text


def ignored_flags(names: tuple[str, ...], applies_to: str) -> str | None:
  """A one-line reason to refuse the flags among `names` given on the command
  line (they apply only to `applies_to`, which this invocation does not do), or
  None when none was given. A boolean flag is named --[no]NAME: either spelling
  was refused."""
  given = [f'--{"[no]" if flags.FLAGS[n].boolean else ""}{n}' for n in names
           if flags.FLAGS[n].present]
  if not given:
    return None
  return (f'{", ".join(given)} only {"applies" if len(given) == 1 else "apply"} to '
          f'{applies_to}: drop {"it" if len(given) == 1 else "them"}')


def read_lines(path: str, flag: str) -> list[str]:
  """The texts of a one-per-line file given as --FLAG=path: empty lines are
  skipped, spaces are text (an indent is a prompt for code), and a literal
  '\\n' in a line is a newline. Raises ConfigError naming the flag for a
  missing, non-UTF-8 or textless file."""
  from lm.config import ConfigError
  if not os.path.isfile(path):
    what = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise ConfigError(f'--{flag}={path} {what}: give a file of one text per line')
  try:
    with open(path, encoding='utf-8-sig') as f:  # A BOM is no part of the first text.
      lines = [line.rstrip('\n').replace('\\n', '\n') for line in f
               if line.rstrip('\n')]
  except UnicodeDecodeError as e:
    raise ConfigError(f'--{flag}={path} is not UTF-8 text ({e.reason} at byte '
                      f'{e.start})') from None
  if not lines:
    raise ConfigError(f'--{flag}={path} holds no text (only empty lines): one text per line')
  return lines


def expand_flagfiles(args: list[str]) -> list[str]:
  """Command-line arguments (no program name) with their --flagfile files read
  in, as absl reads them, so checks of the --config.* overrides see those a
  flagfile gives (an unreadable one: unchanged, absl's parse reports it)."""
  try:
    return flags.FLAGS.read_flags_from_files(list(args), force_gnu=False)
  except flags.Error:
    return list(args)


def _quiet_broken_pipe(hook):
  """sys.excepthook for a CLI: its reader went away (`... | head`), so the
  rest of its output goes to /dev/null, not a BrokenPipeError traceback (exit 1)."""
  def handle(kind, value, tb):
    if not issubclass(kind, BrokenPipeError):
      return hook(kind, value, tb)
    devnull = os.open(os.devnull, os.O_WRONLY)  # Python's flush at exit must not fail too.
    os.dup2(devnull, sys.stdout.fileno())
  return handle


def parse_flags(argv: list[str], positional: int = 0) -> list[str]:
  """absl's flag parsing, with every failure one `error:` line (exit 2); more
  than `positional` words that are not flags are refused too (`... --mode=plan
  plan` had run the whole sweep)."""
  sys.excepthook = _quiet_broken_pipe(sys.excepthook)
  given, argv = argv, argv[:1] + expand_flagfiles(argv[1:])
  twice = _repeated_override(argv)
  if twice:
    print(f'error: {twice} is given twice; give each --config override once', file=sys.stderr)
    sys.exit(2)
  section = _whole_section(argv)
  if section:
    print(f'error: --config.{section}=... would replace the whole {section} section (the '
          f'config file\'s other {section} fields would fall back to their defaults); set '
          f'fields one by one, e.g. --config.{section}.FIELD=VALUE', file=sys.stderr)
    sys.exit(2)
  try:
    rest = flags.FLAGS(given)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      getattr(flags.FLAGS.config, 'to_dict')  # A failed load raises only when read.
      bad = _unparsed_tuple(argv)
      if bad:
        print(f'error: {bad}', file=sys.stderr)
        sys.exit(2)
    if len(rest) - 1 > positional:
      print(f'error: unexpected argument {rest[1 + positional]!r}: flags are --name=value',
            file=sys.stderr)
      sys.exit(2)
    return rest
  except (AttributeError, KeyError) as e:  # A --config.* path with no such field.
    if "attribute 'get_config'" in str(e):  # Or a config file without get_config().
      given = [v for a, b in zip(argv, argv[1:] + [''])
               for v in ([a.split('=', 1)[1]] if a.startswith('--config=') else
                         [b] if a == '--config' else [])]
      path = given[-1].split(':')[0] if given else '(--config)'
      print(f'error: the config file {path} defines no get_config(): choose a config '
            'such as configs/tiny.py', file=sys.stderr)
    elif "has no attribute 'to_dict'" in str(e):  # The loaded object is not a ConfigDict.
      kind = str(e).split("'")[1]  # "'int' object has no attribute 'to_dict'"
      print(f'error: the config file\'s get_config() returned {kind}, not an '
            'ml_collections.ConfigDict (see configs/tiny.py)', file=sys.stderr)
    else:
      print(f'error: a --config override names no config field: {_one_line(e)}'
            + _fields_of_unknown(argv), file=sys.stderr)
  except flags.Error as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
  except Exception as e:  # Loading the config file runs its code: NameError, ImportError, ...
    why = _one_line(e).replace('Configuration is not available because of an earlier '
                               'failure to load: ', '')
    print(f'error: the config could not be loaded: {type(e).__name__}: {why}',
          file=sys.stderr)
  sys.exit(2)
