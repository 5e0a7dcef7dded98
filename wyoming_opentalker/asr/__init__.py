"""Speech to text: the service (request policy, batching), one module per backend, and the
Wyoming handler."""
