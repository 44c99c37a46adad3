"""envoy.filters.http.composite: runs the filter its matcher's ExecuteFilterAction names."""
