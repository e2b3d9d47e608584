"""Management of keys, orgs, prompt templates, providers and routes: the declarative config seed
(``seed``), the admin API (``api``, under ``/admin``) and the ``floopy-admin`` CLI (``cli``)."""
