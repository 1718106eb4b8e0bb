"""The demo city and the data generators: tools that use the house, apart from it."""
