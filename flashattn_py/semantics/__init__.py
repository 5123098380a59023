"""The rules every backend implements, written once in plain torch: which keys a query sees (masks),
the positional encodings' math, the score modifications, and the float64 naive attention the tests
compare every backend with. Imports only flashattn_py.params."""
