"""Pure scoring: slice scores -> volume scores."""
