from __future__ import annotations

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)
    value = models.IntegerField()

    class Meta:
        db_table = "loadsite_item"
        managed = False  # created and filled by demo/django_load.py
