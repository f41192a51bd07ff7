"""gRPC plumbing both services share: rich error statuses, the server's composition
(health, reflection, graceful stop), page tokens and command-line settings."""
