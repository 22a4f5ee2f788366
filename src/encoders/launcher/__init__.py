"""The all-in-one command: every service as a separate local process, supervised like compose would."""
