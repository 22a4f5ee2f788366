"""Everything that touches PostgreSQL: one package for the recorder, search and the viewer."""
