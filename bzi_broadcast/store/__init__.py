"""Storage: the database is the record of what was sent, to whom, when and with which remote id."""
