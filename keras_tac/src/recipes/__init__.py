"""The reference's training recipes (ServiceNow/tac), runnable by name."""
