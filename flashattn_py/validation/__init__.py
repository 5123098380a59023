"""User arguments -> flashattn_py.params, with errors that name the argument and what was expected.

common: one helper per kind of check; attention: a dense call; sequences: packed variable-length
calls; caches: KV caches and paged K/V; positional: encodings; score_mods: softcap, ALiBi, bias, sinks.
Imports only params and semantics."""
