"""Does tokamax's attention work with our pinned jax, and agree with ours?

  python3 -m venv /tmp/tkv && . /tmp/tkv/bin/activate \
    && pip install -r requirements.txt tokamax==0.0.12 \
    && python -m tools.tokamax_check

The evidence behind the README's choice of JAX's own Pallas kernel for the
`pallas` path. tokamax is not a dependency: this only runs where it is
installed. Each of its implementations runs a causal, packed-document (three
documents), GQA (8 query heads on 2 KV heads) self-attention at L=256 and
is compared, outputs and input gradients of sum(out^2), with lm's `xla` path.

Measured on this project's 2-core CPU machine, 2026-11-27 (tokamax 0.0.12
installed beside requirements.txt with no conflict: jax 0.10.2, flax 0.12.8;
it added pydantic 2.14.4, qwix 0.1.8, typeguard 2.13.3 and more):

  implementation  result
  xla             max |diff| 2.0e-05 (outputs and gradients)
  xla_chunked     max |diff| 1.9e-05
  triton          NotImplementedError: Not supported on cpu.
  mosaic          NotImplementedError: Not supported on cpu.

Its kernels refuse CPU devices (no interpret mode), so our CPU suite could not
test them; JAX's Pallas attention runs in interpret mode there.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from lm import model


def main() -> int:
  try:
    import tokamax
  except ImportError:
    print('error: tokamax is not installed: pip install tokamax==0.0.12 (see this file)',
          file=sys.stderr)
    return 2
  B, L, H, K, Dh = 2, 256, 8, 2, 32
  r = np.random.default_rng(0)
  q = jnp.asarray(r.normal(size=(B, L, H, Dh)), jnp.float32)
  k, v = (jnp.asarray(r.normal(size=(B, K, L, Dh)), jnp.float32) for _ in range(2))
  seg_BL = jnp.asarray([[0] * 100 + [1] * 100 + [2] * 56, [0] * 40 + [1] * 216], jnp.int32)

  def ours(q, k, v):
    return model.attention('xla', q, k, v, causal=True, seg_BL=seg_BL)

  def theirs(impl):
    def f(q, k, v):  # tokamax takes keys and values B x S x K x Dh, a dense mask.
      mask_B1LS = (seg_BL[:, :, None] == seg_BL[:, None, :])[:, None]
      return tokamax.dot_product_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                                           mask=mask_B1LS, is_causal=True, implementation=impl)
    return f

  def with_grads(f):
    out = jax.jit(f)(q, k, v)
    return (out, *jax.jit(jax.grad(lambda *a: (f(*a) ** 2).sum(), argnums=(0, 1, 2)))(q, k, v))

  ref = with_grads(ours)
  print(f'jax {jax.__version__}, tokamax {getattr(tokamax, "__version__", "?")}, '
        f'{jax.devices()[0].platform}\n\n  implementation  result')
  for impl in ('xla', 'xla_chunked', 'triton', 'mosaic'):
    try:
      got = with_grads(theirs(impl))
      err = max(float(jnp.abs(a - b).max()) for a, b in zip(got, ref))
      print(f'  {impl:<14}  max |diff| {err:.1e} (outputs and gradients)')
    except NotImplementedError as e:
      print(f'  {impl:<14}  NotImplementedError: {str(e).splitlines()[0]}')
  return 0


if __name__ == '__main__':
  if len(sys.argv) > 1:  # It takes no flags: one would be ignored.
    print(f'error: tools.tokamax_check takes no arguments (got {" ".join(sys.argv[1:])})',
          file=sys.stderr)
    sys.exit(2)
  sys.exit(main())
