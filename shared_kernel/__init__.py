"""Values and errors shared by both services' domains: pure Python, no I/O, no protobuf."""
