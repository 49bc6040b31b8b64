"""The staff side of the helpdesk: users and sessions, the queue, and actions on work orders.

Plain functions over SQLAlchemy sessions, so the web app, the JSON API and the command line
share one implementation (and the tests can call it without HTTP)."""
