"""The command line: `dbtutor COMMAND`, its arguments, and the commands that run experiments."""
