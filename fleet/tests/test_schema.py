"""The migrated database has every constraint and index the models declare: a migration that
drops one by the way (Django drops every index it finds on a column whose ``db_index`` changes,
a partial unique index included) fails here rather than letting two active changes of one
target through."""

import pytest
from django.apps import apps
from django.db import connection

pytestmark = pytest.mark.django_db


def test_every_declared_constraint_and_index_is_in_the_database():
    missing = []
    with connection.cursor() as cursor:
        for model in apps.get_app_config("fleet").get_models():
            present = connection.introspection.get_constraints(cursor, model._meta.db_table)
            for declared in (*model._meta.constraints, *model._meta.indexes):
                if declared.name not in present:
                    missing.append(f"{model.__name__}.{declared.name}")
    assert not missing
