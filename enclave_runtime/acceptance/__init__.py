"""Host-side tools of the acceptance run that need no other part (the loopback capture)."""
