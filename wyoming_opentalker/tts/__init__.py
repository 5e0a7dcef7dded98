"""Text to speech: the service (request policy, voices, pipelined synthesis), one module per
backend, and the Wyoming handler."""
