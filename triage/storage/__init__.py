"""Database: SQLAlchemy 2.x tables, the engine, Alembic migrations."""
