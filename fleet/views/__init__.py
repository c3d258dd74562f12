"""The dashboard views, one module per page family; see ``base`` for the two patterns."""
