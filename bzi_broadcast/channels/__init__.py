"""Channel adapters: each turns one rendered message into one remote call and returns a receipt."""
