"""The floor every package stands on: the catalogue model (departments, tables, columns, logical
types, sharing classes), store settings, the error classes, and the SQL vocabulary that
policies write and engines render.

`gateway/`, `policies/` and `connectors/` all read this package; it imports none of them.
"""
