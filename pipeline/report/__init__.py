"""Report schema, rendering and the CI gate."""
