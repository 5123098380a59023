"""Integrations of flashattn_py's attention into other libraries (imported on demand, never by
``import flashattn_py``): ``flashattn_py.integrations.transformers.register()`` for HuggingFace transformers."""
