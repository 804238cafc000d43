"""Staff accounts, sessions and the audit log (the admin's foundation)."""
