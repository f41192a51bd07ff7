"""The account service's gRPC adapter: servicers, proto translation, the error table."""
