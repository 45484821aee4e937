"""churnwatch."""
