"""The transfer service's gRPC adapter: servicer, proto translation, the error table."""
