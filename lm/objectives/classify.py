"""Sequence classification: labelled texts, cross-entropy over classes.

Each text is followed by EOS (an encoder's also preceded by BOS, which
first-token pooling reads), truncated and right-padded to data.seq_len; the
model pools its final hidden states (model.pool) into model.num_classes
logits. Labels are the sorted labels of the train split unless data.labels
lists them; model.num_classes follows from them.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from lm import classify as labelled
from lm import data as data_lib
from lm.config import ConfigError
from lm.model import cross_entropy
from lm.objectives import base


def load(c):
  """Reads the labelled data; fills data.labels and model.num_classes from it."""
  train, evals, names = labelled.load(c.data, data_lib.cache_root(c.data))
  if c.model.num_classes and c.model.num_classes != len(names):
    raise ConfigError(f'config.model.num_classes={c.model.num_classes} but the data has '
                      f'{len(names)} labels {list(names)}; use 0 (from the data)')
  if len(names) < 2:
    raise ConfigError((f'data.labels={c.data.labels!r} lists' if c.data.labels else
                       'the labelled data has') + f' {len(names)} label(s) {list(names)}; '
                      'a classifier needs at least 2')
  c = dataclasses.replace(
      c, model=dataclasses.replace(c.model, num_classes=len(names)),
      data=dataclasses.replace(c.data, labels=tuple(names)))
  return c, (train, evals)


def data(c, tokenizer, loaded, pidx: int, pcount: int) -> base.Data:
  prefix = (tokenizer.bos_id,) if c.model.family == 'encoder' else ()
  encode = lambda pairs, where: labelled.encode(pairs, c.data.labels, tokenizer,
                                                c.data.seq_len, where, prefix)
  train = labelled.Rows(encode(loaded[0], 'train split'))
  if len(train) < c.train.batch_size:
    raise ConfigError(f'the train split has {len(train)} examples, fewer than '
                      f'train.batch_size={c.train.batch_size}')
  return base.Data(train, data_lib.eval_rows(encode(loaded[1], 'eval split'),
                                             c.train.batch_size, pidx, pcount))


def loss(apply, batch: dict, weights_B, z_loss: float):
  logits_BC = apply(batch['tokens'], valid_BL=batch['valid'])
  labels_B = batch['labels']
  nll, z, n = cross_entropy(logits_BC[:, None], labels_B[:, None], weights_B[:, None], z_loss)
  correct = ((jnp.argmax(logits_BC, -1) == labels_B) * weights_B).sum()
  return (nll + z) / jnp.maximum(n, 1.0), {'nll_sum': nll, 'examples': n, 'correct': correct}


def eval_sums(aux: dict, batch: dict, weights_B, bytes_V) -> dict:
  del batch, weights_B, bytes_V
  return aux


def summarize(sums: dict[str, float]) -> dict[str, float]:
  n = max(sums['examples'], 1.0)
  return {'loss': sums['nll_sum'] / n, 'accuracy': sums['correct'] / n,
          'examples': sums['examples']}


def describe(m: dict) -> str:
  return (f'loss {m["loss"]:.4f} nats/example, accuracy {m["accuracy"]:.4f} on '
          f'{int(m["examples"])} examples')


OBJECTIVE = base.Objective(
    name='classify', families=('decoder', 'encoder'), headline='accuracy',
    higher_is_better=True, data=data, loss=loss, eval_sums=eval_sums, summarize=summarize,
    describe=describe, load=load, count='examples', fields=('data.labels', 'model.pool'),
    # An encoder keeps MASK's id (as its masked-LM checkpoint has it).
    extra_ids=lambda c: 1 if c.model.family != 'decoder' else 0,
    row_shapes=lambda c: {'tokens': ((c.data.seq_len,), np.int32),
                          'valid': ((c.data.seq_len,), np.bool_),
                          'labels': ((), np.int32)})


def predict(params, c, tokenizer, texts: list[str], batch: int = 32) -> np.ndarray:
  """[N, num_classes] label probabilities of new texts, encoded as in training
  (same truncation, EOS, an encoder's BOS); batches of a fixed size, so one
  compiled shape serves any number of texts."""
  import jax

  from lm.model import Transformer
  if not texts:
    return np.zeros((0, c.model.num_classes), np.float32)
  prefix = (tokenizer.bos_id,) if c.model.family == 'encoder' else ()
  rows = labelled.encode([(t, c.data.labels[0]) for t in texts], c.data.labels, tokenizer,
                         c.data.seq_len, 'input', prefix)
  f = jax.jit(lambda p, t, v: jax.nn.softmax(
      Transformer(c.model).apply({'params': p}, t, valid_BL=v).astype(np.float32), -1))
  out = []
  for i in range(0, len(texts), batch):
    tok, val = rows['tokens'][i:i + batch], rows['valid'][i:i + batch]
    pad = batch - len(tok)
    tok = np.concatenate([tok, np.repeat(tok[:1], pad, 0)])
    val = np.concatenate([val, np.repeat(val[:1], pad, 0)])
    out.append(np.asarray(f(params, tok, val))[:batch - pad])
  return np.concatenate(out)
