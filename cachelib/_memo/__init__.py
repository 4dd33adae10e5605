"""The decorator layer: ``Cache``, memoized functions, their options, pickling and summaries."""
