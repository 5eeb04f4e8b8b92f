"""Database access: the embedded server, engines, ORM tables and migrations."""
