"""The gateway: the HTTP edge, identity, GraphQL, execution, observation and the command line."""
