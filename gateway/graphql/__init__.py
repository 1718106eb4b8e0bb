"""GraphQL in and rows out: the schema per role, its scalars, the compiler, the response's shape and errors."""
