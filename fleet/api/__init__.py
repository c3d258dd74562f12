"""The JSON API, version 1 (Django REST framework, OpenAPI schema by drf-spectacular).

Reads: instances (the list's filters, keyset pagination), posture summary and history, account
defaults, drift, batches and their items. Writes: plan then queue an instance change (``changes``),
through the confirmation page's own form and services. Authentication: a per-user API token
(``Authorization: Bearer imdsweb_…``) or the browser session; a token acts with its user's role.
"""
