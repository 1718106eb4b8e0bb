"""The shared vocabulary of citygate: departments, tables, columns, logical types, sharing classes.

`gateway/`, `policies/` and `connectors/` all read this package; it imports none of them.
"""
