"""lm: a JAX/Flax codebase for language-model scaling research."""
