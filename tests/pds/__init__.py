"""The reference-PDS harness for integration tests."""
